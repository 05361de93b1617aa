// The expert FFNs of one MoE layer on one rank: y = act(x @ w_in[e]) @ w_out[e] for each of the
// E_l local experts, computed with one batched (capacity) or grouped (dropless) GEMM per weight
// matrix and per pass, never a loop over experts. GELU in the capacity layout runs in the
// epilogues of the batched GEMMs (gemm_gelu, gemm_dgelu), without a separate activation pass;
// the dropless layout's grouped GEMMs have no such epilogue and keep the separate pass.
//
// Layouts of x (rows already permuted into expert order by dispatch):
// - capacity: x [E_l, C, d]; every expert owns C rows, padding rows are zero (and give zero).
//   Pass an empty `expert_rows`.
// - dropless: x [R, d]; expert e owns expert_rows[e] consecutive rows (host counts, zeros
//   allowed, summing to R).
//
// Tensor parallelism splits the hidden axis F over the tp group: each rank holds w_in's and
// w_out's slices for its F_local = F / tp hidden units and returns PARTIAL results; the caller
// all-reduces y (forward) and dx (backward) over tp. For swiglu a rank's w_in is
// [gate_local | up_local]: its own gate columns followed by the matching up columns, not a
// contiguous column slice of the global [gate | up]. Weight gradients are local to the shard.
#pragma once

#include <cstdint>
#include <span>

#include "core/ops.h"
#include "core/storage.h"
#include "core/tensor.h"

namespace sy {

enum class ExpertActivation { gelu, relu, swiglu };

struct ExpertFFNConfig {
  std::int64_t local_experts = 0;  // E_l
  std::int64_t d_model = 0;        // d
  std::int64_t d_ff = 0;           // F of this rank's tensor-parallel shard
  ExpertActivation activation = ExpertActivation::gelu;

  // Width of x @ w_in: F, or 2F for swiglu ([gate | up]).
  std::int64_t d_in() const { return activation == ExpertActivation::swiglu ? 2 * d_ff : d_ff; }
};

// Weights (compute dtype, x's) or their gradients (f32, written or added to by a GradMode).
struct ExpertWeights {
  Tensor w_in;   // [E_l, d, F_in]
  Tensor w_out;  // [E_l, F, d]
};

// Saved by forward for backward, in x's dtype.
struct ExpertActivations {
  Tensor h;    // pre-activation x @ w_in: [rows..., F_in]
  Tensor act;  // act(h): [rows..., F]
  // Backward only: act is an empty buffer that backward fills from h (forward did not keep it).
  bool recompute_act = false;
};

// Backward's temporaries, in x's dtype; free again once backward returns.
struct ExpertScratch {
  Tensor dact;  // [rows..., F]; not set for gelu in the capacity layout (gemm_dgelu writes dh)
  Tensor dh;    // [rows..., F_in]
};

// What the caller plans for x of a given shape ([E_l, C, d] or [R, d]). dact is empty when
// backward needs no dact buffer.
struct ExpertBufferShapes {
  Shape h, act, dact, dh;
};

class ExpertFFN {
 public:
  explicit ExpertFFN(const ExpertFFNConfig& config);
  const ExpertFFNConfig& config() const { return config_; }

  ExpertBufferShapes buffer_shapes(const Shape& x_shape) const;
  ExpertActivations alloc_activations(Arena& arena, const Shape& x_shape, DType dtype) const;
  ExpertScratch alloc_scratch(Arena& arena, const Shape& x_shape, DType dtype) const;

  // y: x's shape and dtype (written; a partial sum under tensor parallelism). Fills saved.
  void forward(const Tensor& x, std::span<const std::int64_t> expert_rows, const ExpertWeights& weights,
               const ExpertActivations& saved, const Tensor& y, StreamRef stream = {}) const;
  // act = the activation of h (shapes as in ExpertActivations): what forward stores, for a
  // backward that recomputes it instead of keeping it.
  void activation_forward(const Tensor& h, const Tensor& act, StreamRef stream = {}) const;
  // dx: x's shape and dtype (written; partial under tensor parallelism). grads: f32, written
  // (GradMode::overwrite: every expert's, zeros for an expert without rows) or added to. Reads
  // the x and saved of the matching forward.
  void backward(const Tensor& x, std::span<const std::int64_t> expert_rows, const ExpertWeights& weights,
                const ExpertActivations& saved, const Tensor& dy, const Tensor& dx, const ExpertWeights& grads,
                const ExpertScratch& scratch, GradMode mode, StreamRef stream = {}) const;

 private:
  // Checks x against the layout and returns true for dropless.
  bool check_layout(const char* op, const Tensor& x, std::span<const std::int64_t> expert_rows) const;
  // check_layout plus the weights and saved activations both directions read; returns dropless.
  bool check_inputs(const char* op, const Tensor& x, std::span<const std::int64_t> expert_rows,
                    const ExpertWeights& weights, const ExpertActivations& saved) const;
  // GELU in the capacity layout: the activation and its gradient live in the GEMM epilogues.
  bool gelu_in_epilogue(bool dropless) const { return config_.activation == ExpertActivation::gelu && !dropless; }

  ExpertFFNConfig config_;
};

}  // namespace sy
