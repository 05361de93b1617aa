// Dispatch and combine: the row movements of moe/permute.h joined by all-to-alls over ep.
#include "moe/dispatch.h"

#include "moe/permute.h"

namespace sy {
namespace {

// A copy of host values in a tensor from the arena, on the arena's device.
Tensor upload_i32(const std::vector<std::int32_t>& values, const Shape& shape, Arena& arena, StreamRef stream) {
  Tensor t = arena.alloc(shape, DType::i32);
  const Tensor host(const_cast<std::int32_t*>(values.data()), shape, DType::i32, Device::cpu);
  copy(t, host, stream);
  return t;
}

std::vector<std::int32_t> download_i32(const Tensor& t, StreamRef stream) {
  std::vector<std::int32_t> values(static_cast<std::size_t>(t.numel()));
  const Tensor host(values.data(), t.shape(), DType::i32, Device::cpu);
  copy(host, t, stream);  // waits for the stream when t is on the GPU
  return values;
}

}  // namespace

DispatchPlan plan_dispatch(const Routing& routing, Communicator& ep, Arena& arena, StreamRef stream,
                           PhaseTimer* timer) {
  DispatchPlan plan;
  plan.peers = ep.size();
  SY_CHECK(routing.experts % plan.peers == 0)
      << "moe.experts=" << routing.experts << " is not divisible by the expert-parallel size " << plan.peers;
  plan.local_experts = routing.experts / plan.peers;
  plan.capacity = routing.capacity;
  const int peers = plan.peers, locals = plan.local_experts;
  const Device device = routing.expert_counts.device();

  std::vector<std::int32_t> my_counts, recv_counts(static_cast<std::size_t>(peers * locals));
  if (plan.capacity > 0) {
    // Fixed-size exchange: C rows per expert from every rank, padding included.
    my_counts.assign(static_cast<std::size_t>(routing.experts), std::int32_t(plan.capacity));
    recv_counts.assign(recv_counts.size(), std::int32_t(plan.capacity));
    plan.recv_counts = upload_i32(recv_counts, {peers, locals}, arena, stream);
  } else {
    // Each peer p gets the L counts of its experts: one row of L per peer.
    const Tensor send = routing.expert_counts.reshape({peers, locals});
    plan.recv_counts = arena.alloc({peers, locals}, DType::i32);
    if (device == ep.device()) {
      const std::vector<std::int64_t> ones(static_cast<std::size_t>(peers), 1);
      ep.all_to_all(send, ones, plan.recv_counts, ones, stream);
    } else {
      SY_FAIL() << "plan_dispatch: routing on " << device_name(device) << " but the ep group moves "
                << device_name(ep.device()) << " tensors";
    }
    my_counts = download_i32(routing.expert_counts, stream);
    recv_counts = download_i32(plan.recv_counts, stream);
  }
  mark_phase(timer, "all_to_all");  // the counts exchange and its host read
  plan.offsets = arena.alloc({routing.experts + 1}, DType::i32);
  moe_expert_offsets(routing.expert_counts, plan.capacity, plan.offsets, stream);
  mark_phase(timer, "permute");

  plan.send_rows_per_peer.assign(static_cast<std::size_t>(peers), 0);
  plan.recv_rows_per_peer.assign(static_cast<std::size_t>(peers), 0);
  plan.rows_per_local_expert.assign(static_cast<std::size_t>(locals), 0);
  for (int p = 0; p < peers; ++p) {
    for (int l = 0; l < locals; ++l) {
      const std::size_t i = static_cast<std::size_t>(p * locals + l);
      plan.send_rows_per_peer[static_cast<std::size_t>(p)] += my_counts[i];
      plan.recv_rows_per_peer[static_cast<std::size_t>(p)] += recv_counts[i];
      plan.rows_per_local_expert[static_cast<std::size_t>(l)] += recv_counts[i];
    }
  }
  for (int p = 0; p < peers; ++p) {
    plan.send_rows += plan.send_rows_per_peer[static_cast<std::size_t>(p)];
    plan.recv_rows += plan.recv_rows_per_peer[static_cast<std::size_t>(p)];
  }
  return plan;
}

Tensor dispatch_forward(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                        Arena& arena, StreamRef stream, PhaseTimer* timer) {
  const std::int64_t d = x.size(1);
  Tensor send = arena.alloc({plan.send_rows, d}, x.dtype());
  // Capacity padding goes through the expert GEMMs; zeros keep it finite and out of dW.
  if (plan.capacity > 0) fill_bytes(send, 0, stream);
  moe_scatter_rows(x, routing.expert, routing.slot, plan.offsets, send, stream);
  mark_phase(timer, "permute");
  // With one rank in the group the exchange is a copy and the regroup the identity: skip both.
  if (ep.size() == 1) return send;
  Tensor recv = arena.alloc({plan.recv_rows, d}, x.dtype());
  ep.all_to_all(send, plan.send_rows_per_peer, recv, plan.recv_rows_per_peer, stream);
  mark_phase(timer, "all_to_all");
  Tensor expert_in = arena.alloc({plan.recv_rows, d}, x.dtype());
  moe_regroup(recv, plan.recv_counts, expert_in, true, stream);
  mark_phase(timer, "permute");
  return expert_in;
}

void dispatch_backward(const Tensor& d_expert_in, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& dx, StreamRef stream, PhaseTimer* timer) {
  const std::int64_t d = dx.size(1);
  if (ep.size() == 1) {
    moe_gather_rows_sum(d_expert_in, routing.expert, routing.slot, plan.offsets, dx, stream);
    mark_phase(timer, "permute");
    return;
  }
  Tensor d_recv = arena.alloc({plan.recv_rows, d}, dx.dtype());
  moe_regroup(d_expert_in, plan.recv_counts, d_recv, false, stream);
  mark_phase(timer, "permute");
  Tensor d_send = arena.alloc({plan.send_rows, d}, dx.dtype());
  ep.all_to_all(d_recv, plan.recv_rows_per_peer, d_send, plan.send_rows_per_peer, stream);
  mark_phase(timer, "all_to_all");
  moe_gather_rows_sum(d_send, routing.expert, routing.slot, plan.offsets, dx, stream);
  mark_phase(timer, "permute");
}

Tensor combine_forward(const Tensor& expert_out, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& out, StreamRef stream, PhaseTimer* timer) {
  const std::int64_t d = out.size(1);
  if (ep.size() == 1) {
    moe_combine(expert_out, routing.expert, routing.slot, plan.offsets, routing.gate, out, stream);
    mark_phase(timer, "combine");
    return expert_out;
  }
  Tensor source_major = arena.alloc({plan.recv_rows, d}, out.dtype());
  moe_regroup(expert_out, plan.recv_counts, source_major, false, stream);
  mark_phase(timer, "permute");
  Tensor returned = arena.alloc({plan.send_rows, d}, out.dtype());
  ep.all_to_all(source_major, plan.recv_rows_per_peer, returned, plan.send_rows_per_peer, stream);
  mark_phase(timer, "all_to_all");
  moe_combine(returned, routing.expert, routing.slot, plan.offsets, routing.gate, out, stream);
  mark_phase(timer, "combine");
  return returned;
}

Tensor combine_backward(const Tensor& dout, const Tensor& returned, const Routing& routing, const DispatchPlan& plan,
                        Communicator& ep, Arena& arena, const Tensor& dgate, StreamRef stream, PhaseTimer* timer) {
  const std::int64_t d = dout.size(1);
  Tensor d_returned = arena.alloc({plan.send_rows, d}, dout.dtype());
  moe_combine_backward(dout, returned, routing.expert, routing.slot, plan.offsets, routing.gate, d_returned, dgate,
                       stream);
  mark_phase(timer, "combine");
  if (ep.size() == 1) return d_returned;
  Tensor d_source_major = arena.alloc({plan.recv_rows, d}, dout.dtype());
  ep.all_to_all(d_returned, plan.send_rows_per_peer, d_source_major, plan.recv_rows_per_peer, stream);
  mark_phase(timer, "all_to_all");
  Tensor d_expert_out = arena.alloc({plan.recv_rows, d}, dout.dtype());
  moe_regroup(d_source_major, plan.recv_counts, d_expert_out, true, stream);
  mark_phase(timer, "permute");
  return d_expert_out;
}

}  // namespace sy
