// The MoE layer's forward and backward, side by side, over the pieces in router.h,
// dispatch.h and experts.h.
#include "moe/moe_layer.h"

#include <algorithm>

#include "moe/permute.h"

namespace sy {
namespace {

ExpertFFNConfig expert_config(const MoeLayerConfig& config, const MoeGroups& groups) {
  SY_CHECK(groups.ep != nullptr) << "MoeLayer: the ep communicator is required (a group of one for ep = 1)";
  const int ep = groups.ep->size(), tp = groups.tp ? groups.tp->size() : 1;
  SY_CHECK(config.router.experts % ep == 0)
      << "moe.experts=" << config.router.experts << " is not divisible by parallel.expert=" << ep;
  SY_CHECK(config.d_ff % tp == 0) << "moe.d_ff=" << config.d_ff << " is not divisible by parallel.tensor=" << tp;
  ExpertFFNConfig e;
  e.local_experts = config.router.experts / ep;
  e.d_model = config.d_model;
  e.d_ff = config.d_ff / tp;
  e.activation = config.activation;
  return e;
}

}  // namespace

MoeLayer::MoeLayer(const MoeLayerConfig& config, MoeGroups groups)
    : config_(config), groups_(groups), experts_(expert_config(config, groups)) {
  validate(config.router);
  local_experts_ = experts_.config().local_experts;
}

Tensor MoeLayer::expert_layout(const Tensor& rows) const {
  if (plan_.capacity == 0) return rows;
  return rows.reshape({local_experts_, rows.size(0) / local_experts_, rows.size(1)});
}

Tensor MoeLayer::chunk_view(const Tensor& rows, int chunk) const {
  return expert_layout(rows.slice_rows(plan_.chunk_first_row[std::size_t(chunk)], plan_.chunk_rows(chunk)));
}

std::span<const std::int64_t> MoeLayer::chunk_rows(int chunk) const {
  if (plan_.capacity > 0) return {};
  return std::span<const std::int64_t>(plan_.chunk_rows_per_local_expert)
      .subspan(std::size_t(chunk) * std::size_t(local_experts_), std::size_t(local_experts_));
}

StreamEvent& MoeLayer::event(std::size_t index) {
  while (events_.size() <= index) events_.push_back(std::make_unique<StreamEvent>(groups_.ep->device()));
  return *events_[index];
}

// The schedule on the communication stream is: to(0), to(1), back(0), to(2), back(1), ...,
// back(K-1), where back(j) first waits for chunk j's compute. So to(j + 1) runs beside compute(j)
// and back(j) beside compute(j + 1). One stream keeps every rank's NCCL calls in the same order.
template <class Compute>
void MoeLayer::pipeline(const Tensor& send_in, const Tensor& expert_in, const Tensor& expert_out,
                        const Tensor& send_out, Arena& arena, StreamRef stream, Compute&& compute) {
  Communicator* tp = groups_.tp && groups_.tp->size() > 1 ? groups_.tp : nullptr;
  const int chunks = plan_.chunks;
  auto tp_sum = [&](int j, StreamRef on) {
    if (tp) tp->all_reduce(expert_out.slice_rows(plan_.chunk_first_row[std::size_t(j)], plan_.chunk_rows(j)),
                           ReduceOp::sum, on);
  };
  if (plan_.peers == 1) {
    for (int j = 0; j < chunks; ++j) {
      if (plan_.chunk_rows(j) > 0) compute(j);
      tp_sum(j, stream);
    }
    mark_phase(timer_, "experts");
    return;
  }
  Communicator& ep = *groups_.ep;
  const StreamRef comm = comm_.handle ? comm_ : stream;
  // K = 1 moves whole blocks through staging buffers (moe/dispatch.h), released once the layer's
  // stream has waited for the last exchange: nothing that reuses their memory runs before.
  const std::size_t staging_mark = arena.mark();
  const Tensor staging_in = exchange_staging(plan_, send_in, arena);
  const Tensor staging_out = exchange_staging(plan_, send_in, arena);
  auto move = [&](int j, bool to_experts, const Tensor& from, const Tensor& to) {
    if (chunks == 1) {
      exchange_whole(plan_, to_experts, from, to, to_experts ? staging_in : staging_out, ep, comm);
    } else {
      exchange_chunk(plan_, j, to_experts, from, to, ep, comm);
    }
  };
  // Events: 0 inputs ready, 1 all back, 2 + j chunk j arrived, 2 + K + j chunk j computed.
  event(0).record(stream);
  event(0).wait_on(comm);
  auto send = [&](int j) {
    move(j, true, send_in, expert_in);
    event(2 + std::size_t(j)).record(comm);
  };
  send(0);
  for (int j = 0; j < chunks; ++j) {
    if (j + 1 < chunks) send(j + 1);
    event(2 + std::size_t(j)).wait_on(stream);
    mark_phase(timer_, "all_to_all");  // what the experts waited for: exposed communication
    if (plan_.chunk_rows(j) > 0) compute(j);
    mark_phase(timer_, "experts");
    StreamEvent& computed = event(2 + std::size_t(chunks + j));
    computed.record(stream);
    computed.wait_on(comm);
    tp_sum(j, comm);
    move(j, false, expert_out, send_out);
  }
  event(1).record(comm);
  event(1).wait_on(stream);
  mark_phase(timer_, "all_to_all");
  arena.release_to(staging_mark);
}

void MoeLayer::forward(const Tensor& x, const MoeWeights& weights, bool training, RngKey key, std::int64_t first_token,
                       Arena& arena, const Tensor& out, StreamRef stream) {
  x_ = x;
  router_forward(config_.router, x, weights.w_router, weights.w_noise, training, key, first_token, arena, router_,
                 stream, config_.router.loss_scope == RouterLossScope::global ? groups_.dp : nullptr);
  mark_phase(timer_, "router");
  const Routing& routing = router_.routing;
  plan_ = plan_dispatch(routing, *groups_.ep, config_.dispatch_chunks, arena, stream, timer_);
  const Tensor send = dispatch_permute(x, routing, plan_, arena, stream);
  mark_phase(timer_, "permute");

  // Every buffer the communication stream touches is allocated before act's release mark.
  const bool remote = plan_.peers > 1;
  const std::int64_t d = x.size(1), rows = plan_.recv_rows;
  expert_in_ = remote ? arena.alloc({rows, d}, x.dtype()) : send;
  const Tensor expert_out = arena.alloc({rows, d}, x.dtype());
  returned_ = remote ? arena.alloc({plan_.send_rows, d}, x.dtype()) : expert_out;
  activations_.h = arena.alloc({rows, experts_.config().d_in()}, x.dtype());
  // With recompute_activation, act lives only through the experts' forward: released here,
  // recomputed in backward. Later allocations reuse its memory after the GEMM that reads it.
  const std::size_t act_mark = arena.mark();
  activations_.act = arena.alloc({rows, experts_.config().d_ff}, x.dtype());
  activations_.recompute_act = false;
  pipeline(send, expert_in_, expert_out, returned_, arena, stream, [&](int j) {
    const ExpertActivations saved{chunk_view(activations_.h, j), chunk_view(activations_.act, j)};
    experts_.forward(chunk_view(expert_in_, j), chunk_rows(j), weights.experts, saved, chunk_view(expert_out, j),
                     stream);
  });
  if (config_.recompute_activation) {
    arena.release_to(act_mark);
    activations_.act = Tensor();
  }
  moe_combine(returned_, routing.expert, routing.slot, plan_.offsets, routing.gate, out, stream);
  mark_phase(timer_, "combine");
}

void MoeLayer::backward(const Tensor& dout, const MoeWeights& weights, Arena& arena, const Tensor& dx,
                        const MoeGrads& grads, GradMode mode, StreamRef stream) {
  const Routing& routing = router_.routing;
  const bool remote = plan_.peers > 1;
  const std::int64_t d = dout.size(1), rows = plan_.recv_rows;
  Tensor dgate = arena.alloc(routing.gate.shape(), routing.gate.dtype());
  const Tensor d_returned = arena.alloc({plan_.send_rows, d}, dout.dtype());
  moe_combine_backward(dout, returned_, routing.expert, routing.slot, plan_.offsets, routing.gate, d_returned, dgate,
                       stream);
  mark_phase(timer_, "combine");

  const Tensor d_expert_out = remote ? arena.alloc({rows, d}, dout.dtype()) : d_returned;
  const Tensor d_expert_in = arena.alloc({rows, d}, dout.dtype());
  const Tensor d_send = remote ? arena.alloc({plan_.send_rows, d}, dout.dtype()) : d_expert_in;
  ExpertActivations saved = activations_;
  if (!saved.act.defined()) {  // recompute_activation: the experts' backward refills act from h
    saved.act = arena.alloc({rows, experts_.config().d_ff}, dout.dtype());
    saved.recompute_act = true;
  }
  // Scratch for the largest chunk; the chunks take turns with it on the layer's stream.
  std::int64_t largest = 0;
  for (int j = 0; j < plan_.chunks; ++j) largest = std::max(largest, plan_.chunk_rows(j));
  const Shape largest_shape =
      plan_.capacity > 0 ? Shape{local_experts_, largest / local_experts_, d} : Shape{largest, d};
  const ExpertScratch scratch = experts_.alloc_scratch(arena, largest_shape, dout.dtype());
  auto leading = [&](const Tensor& t, std::int64_t n) {
    return t.defined() ? expert_layout(t.reshape({t.numel() / t.size(-1), t.size(-1)}).slice_rows(0, n)) : Tensor();
  };
  // The first chunk that computes writes the expert gradients in `mode`, the later ones add (the
  // chunks run in order on the layer's stream). Chunks without rows are skipped: when none has
  // any (no token reached this rank's experts), overwriting writes the zeros here.
  GradMode chunk_mode = mode;
  pipeline(d_returned, d_expert_out, d_expert_in, d_send, arena, stream, [&](int j) {
    const std::int64_t n = plan_.chunk_rows(j);
    const ExpertActivations chunk{chunk_view(saved.h, j), chunk_view(saved.act, j), saved.recompute_act};
    experts_.backward(chunk_view(expert_in_, j), chunk_rows(j), weights.experts, chunk, chunk_view(d_expert_out, j),
                      chunk_view(d_expert_in, j), grads.experts, {leading(scratch.dact, n), leading(scratch.dh, n)},
                      chunk_mode, stream);
    chunk_mode = GradMode::accumulate;
  });
  if (chunk_mode == GradMode::overwrite) {
    fill_bytes(grads.experts.w_in, 0, stream);
    fill_bytes(grads.experts.w_out, 0, stream);
  }

  // dx = (gradient through the experts' inputs) + (gradient through the router's input): the
  // gather writes the first, the router adds the second.
  moe_gather_rows_sum(d_send, routing.expert, routing.slot, plan_.offsets, dx, stream);
  mark_phase(timer_, "permute");
  router_backward(router_, weights.w_router, weights.w_noise, dgate, dx, grads.w_router, grads.w_noise, mode, arena,
                  stream);
  mark_phase(timer_, "router");
}

}  // namespace sy
