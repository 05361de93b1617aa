// The MoE layer: router -> dispatch over ep -> local experts (one batched or grouped GEMM per
// weight) -> combine, forward and backward, with per-forward statistics. Under tensor
// parallelism every tp rank routes the same tokens and holds a d_ff shard of each expert;
// expert outputs and input gradients are summed over tp.
//
// Overlap: with dispatch_chunks = K > 1 and more than one ep rank, the exchanges run in K chunks
// (moe/dispatch.h) on a communication stream while the experts compute on the layer's stream:
// chunk j + 1 travels to the experts and chunk j - 1 travels back while chunk j computes, in
// both passes. The phase "all_to_all" then holds only the time the compute stream waits for the
// network: the exposed communication.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/storage.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "parallel/communicator.h"
#include "parallel/stream_event.h"

namespace sy {

struct MoeLayerConfig {
  RouterSettings router;
  std::int64_t d_model = 0;
  std::int64_t d_ff = 0;  // per expert, before tensor-parallel splitting
  ExpertActivation activation = ExpertActivation::gelu;
  // Keep only the experts' pre-activation h and recompute act = f(h) in backward: one
  // elementwise pass for [rows, d_ff] of memory per layer.
  bool recompute_activation = false;
  // K: pieces each dispatch and combine is cut into, so communication overlaps the experts.
  int dispatch_chunks = 1;
};

// The groups a layer talks to: ep (all-to-all), tp (expert partial sums; may be null when
// tp = 1), dp (global-scope balancing statistics; may be null for local scope).
struct MoeGroups {
  Communicator* ep = nullptr;
  Communicator* tp = nullptr;
  Communicator* dp = nullptr;
};

// Parameters as this rank holds them. The router is replicated; experts are this ep rank's L
// experts, each with this tp rank's d_ff shard.
struct MoeWeights {
  Tensor w_router;  // [d, E] f32 (f64 in CPU gradient checks)
  Tensor w_noise;   // [d, E] like w_router; only for gaussian noise
  ExpertWeights experts;
};
// Gradients: f32 (f64 with f64 weights), written or added to by a GradMode like every parameter
// gradient.
using MoeGrads = MoeWeights;

class MoeLayer {
 public:
  MoeLayer(const MoeLayerConfig& config, MoeGroups groups);
  const MoeLayerConfig& config() const { return config_; }
  std::int64_t local_experts() const { return local_experts_; }

  // x: [N, d] -> out: [N, d] (written). Saves what backward needs in `arena` (which must live
  // until backward), and keeps a view of x, which must too: the router's backward recomputes
  // its input from it. `first_token`: global index of local token 0, so router noise is the same
  // at every layout.
  void forward(const Tensor& x, const MoeWeights& weights, bool training, RngKey key, std::int64_t first_token,
               Arena& arena, const Tensor& out, StreamRef stream = {});
  // dout: [N, d] -> dx: [N, d] (written); grads are written (GradMode::overwrite: all of them,
  // zeros for experts that got no tokens) or added to. Aux and z losses enter with gradient 1
  // (their coefficients are applied by the router).
  void backward(const Tensor& dout, const MoeWeights& weights, Arena& arena, const Tensor& dx, const MoeGrads& grads,
                GradMode mode, StreamRef stream = {});

  // Optional: splits forward and backward time into router, permute, all_to_all (exposed),
  // experts and combine.
  void set_phase_timer(PhaseTimer* timer) { timer_ = timer; }
  // The stream the chunked exchanges (and their tp sums) run on, beside the layer's stream; the
  // null stream (the default, and always on the CPU) runs everything in order on the layer's.
  void set_comm_stream(StreamRef comm) { comm_ = comm; }

  const RouterState& router_state() const { return router_; }
  RouterStats stats(StreamRef stream = {}) const { return fetch_router_stats(router_, stream); }

 private:
  // Rows [rows, width] as the expert GEMMs take them: [L, rows / L, width] in capacity mode,
  // unchanged when dropless (with per-expert row counts from chunk_rows).
  Tensor expert_layout(const Tensor& rows) const;
  // Chunk `chunk` of an expert-side buffer [R, width], in expert layout.
  Tensor chunk_view(const Tensor& rows, int chunk) const;
  std::span<const std::int64_t> chunk_rows(int chunk) const;  // empty in capacity mode
  // For every chunk j: exchange chunk j of `send_in` into `expert_in`, run compute(j) on the
  // layer's stream (reading expert_in, writing expert_out), sum its rows of expert_out over tp,
  // exchange them back into `send_out`. Pipelined over the communication stream as the header
  // describes; with one ep rank the sides coincide and only compute and the tp sums run.
  template <class Compute>
  void pipeline(const Tensor& send_in, const Tensor& expert_in, const Tensor& expert_out, const Tensor& send_out,
                Arena& arena, StreamRef stream, Compute&& compute);
  StreamEvent& event(std::size_t index);

  MoeLayerConfig config_;
  MoeGroups groups_;
  PhaseTimer* timer_ = nullptr;
  StreamRef comm_;
  std::vector<std::unique_ptr<StreamEvent>> events_;  // ordering between the two streams
  std::int64_t local_experts_ = 0;
  ExpertFFN experts_;

  // Saved by forward for backward.
  Tensor x_;
  RouterState router_;
  DispatchPlan plan_;
  Tensor expert_in_;
  ExpertActivations activations_;
  Tensor returned_;
};

}  // namespace sy
