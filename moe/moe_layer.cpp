// The MoE layer's forward and backward, side by side, over the pieces in router.h,
// dispatch.h and experts.h.
#include "moe/moe_layer.h"

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

std::vector<std::int64_t> MoeLayer::expert_rows() const {
  if (plan_.capacity > 0) return {};
  return plan_.rows_per_local_expert;
}

Tensor MoeLayer::expert_view(const Tensor& rows) const {
  if (plan_.capacity == 0) return rows;
  return rows.reshape({local_experts_, plan_.peers * plan_.capacity, config_.d_model});
}

void MoeLayer::forward(const Tensor& x, const MoeWeights& weights, bool training, RngKey key, std::int64_t first_token,
                       Arena& arena, const Tensor& out, StreamRef stream) {
  x_ = x;
  router_forward(config_.router, x, weights.w_router, weights.w_noise, training, key, first_token, arena, router_,
                 stream, config_.router.loss_scope == RouterLossScope::global ? groups_.dp : nullptr);
  mark_phase(timer_, "router");
  const Routing& routing = router_.routing;
  plan_ = plan_dispatch(routing, *groups_.ep, arena, stream, timer_);
  expert_in_ = dispatch_forward(x, routing, plan_, *groups_.ep, arena, stream, timer_);

  const Tensor expert_x = expert_view(expert_in_);
  const ExpertBufferShapes shapes = experts_.buffer_shapes(expert_x.shape());
  activations_.h = arena.alloc(shapes.h, x.dtype());
  Tensor expert_out = arena.alloc(expert_in_.shape(), x.dtype());
  // With recompute_activation, act lives only through the experts' forward: released here,
  // recomputed in backward. Later allocations reuse its memory after the GEMM that reads it.
  const std::size_t act_mark = arena.mark();
  activations_.act = arena.alloc(shapes.act, x.dtype());
  const std::vector<std::int64_t> rows = expert_rows();
  experts_.forward(expert_x, rows, weights.experts, activations_, expert_view(expert_out), stream);
  if (config_.recompute_activation) {
    arena.release_to(act_mark);
    activations_.act = Tensor();
  }
  if (groups_.tp && groups_.tp->size() > 1) groups_.tp->all_reduce(expert_out, ReduceOp::sum, stream);
  mark_phase(timer_, "experts");

  returned_ = combine_forward(expert_out, routing, plan_, *groups_.ep, arena, out, stream, timer_);
}

void MoeLayer::backward(const Tensor& dout, const MoeWeights& weights, Arena& arena, const Tensor& dx,
                        const MoeGrads& grads, StreamRef stream) {
  const Routing& routing = router_.routing;
  Tensor dgate = arena.alloc(routing.gate.shape(), routing.gate.dtype());
  Tensor d_expert_out = combine_backward(dout, returned_, routing, plan_, *groups_.ep, arena, dgate, stream, timer_);

  const Tensor expert_x = expert_view(expert_in_);
  ExpertActivations saved = activations_;
  if (!saved.act.defined()) {  // recompute_activation: the experts' backward refills act from h
    saved.act = arena.alloc(experts_.buffer_shapes(expert_x.shape()).act, dout.dtype());
    saved.recompute_act = true;
  }
  ExpertScratch scratch = experts_.alloc_scratch(arena, expert_x.shape(), dout.dtype());
  Tensor d_expert_in = arena.alloc(expert_in_.shape(), dout.dtype());
  const std::vector<std::int64_t> rows = expert_rows();
  experts_.backward(expert_x, rows, weights.experts, saved, expert_view(d_expert_out), expert_view(d_expert_in),
                    grads.experts, scratch, stream);
  if (groups_.tp && groups_.tp->size() > 1) groups_.tp->all_reduce(d_expert_in, ReduceOp::sum, stream);
  mark_phase(timer_, "experts");

  // dx = (gradient through the experts' inputs) + (gradient through the router's input):
  // dispatch writes the first, the router adds the second.
  dispatch_backward(d_expert_in, routing, plan_, *groups_.ep, arena, dx, stream, timer_);
  router_backward(router_, weights.w_router, weights.w_noise, dgate, dx, grads.w_router, grads.w_noise, arena, stream);
  mark_phase(timer_, "router");
}

}  // namespace sy
