// Expert FFNs: forward then backward, both built from the core batched/grouped GEMMs and
// activation ops (GELU in the capacity layout fused into the GEMMs), so the same code runs on
// CPU (the reference) and CUDA.
#include "moe/experts.h"

#include "core/ops.h"

namespace sy {
namespace {

// x's shape with the last axis (d) replaced by `width`.
Shape with_width(const Shape& x_shape, std::int64_t width) {
  Shape shape = x_shape;
  shape.back() = width;
  return shape;
}

// The activation ops see all rows at once as [rows, width].
Tensor as_rows(const Tensor& t) { return t.reshape({t.numel() / t.size(-1), t.size(-1)}); }

// c = a @ op(b[e]) for each expert's rows.
void expert_matmul(bool dropless, const Tensor& a, const Tensor& b, const Tensor& c,
                   std::span<const std::int64_t> expert_rows, bool trans_b, StreamRef stream) {
  if (dropless) {
    gemm_grouped(a, b, c, expert_rows, trans_b, 1.0f, 0.0f, stream);
  } else {
    gemm_batched(a, b, c, false, trans_b, 1.0f, 0.0f, stream);
  }
}

// grad[e] (+)= a_e^T @ b_e, the reduction over each expert's rows. Overwriting, an expert without
// rows gets zeros (gemm_grouped_trans_a's empty group at beta 0; capacity slots are never empty).
void expert_weight_grad(bool dropless, const Tensor& a, const Tensor& b, const Tensor& grad,
                        std::span<const std::int64_t> expert_rows, GradMode mode, StreamRef stream) {
  if (dropless) {
    gemm_grouped_trans_a(a, b, grad, expert_rows, 1.0f, grad_beta(mode), stream);
  } else {
    gemm_batched(a, b, grad, true, false, 1.0f, grad_beta(mode), stream);
  }
}

void check_tensor(const char* op, const char* arg, const Tensor& t, const Shape& shape, DType dtype) {
  SY_CHECK(t.defined()) << op << ": " << arg << " is not set";
  check_contiguous(op, arg, t);
  check_shape(op, arg, t, shape);
  check_dtype(op, arg, t, dtype);
}

}  // namespace

ExpertFFN::ExpertFFN(const ExpertFFNConfig& config) : config_(config) {
  SY_CHECK_AS(ErrorKind::config, config.local_experts > 0 && config.d_model > 0 && config.d_ff > 0)
      << "ExpertFFN: local_experts, d_model and d_ff must be positive, got " << config.local_experts << ", "
      << config.d_model << ", " << config.d_ff;
}

ExpertBufferShapes ExpertFFN::buffer_shapes(const Shape& x_shape) const {
  const std::int64_t f = config_.d_ff, f_in = config_.d_in();
  const bool dropless = x_shape.size() == 2;
  const Shape dact = gelu_in_epilogue(dropless) ? Shape{} : with_width(x_shape, f);
  return {with_width(x_shape, f_in), with_width(x_shape, f), dact, with_width(x_shape, f_in)};
}

ExpertActivations ExpertFFN::alloc_activations(Arena& arena, const Shape& x_shape, DType dtype) const {
  const ExpertBufferShapes shapes = buffer_shapes(x_shape);
  return {arena.alloc(shapes.h, dtype), arena.alloc(shapes.act, dtype)};
}

ExpertScratch ExpertFFN::alloc_scratch(Arena& arena, const Shape& x_shape, DType dtype) const {
  const ExpertBufferShapes shapes = buffer_shapes(x_shape);
  return {shapes.dact.empty() ? Tensor() : arena.alloc(shapes.dact, dtype), arena.alloc(shapes.dh, dtype)};
}

bool ExpertFFN::check_layout(const char* op, const Tensor& x, std::span<const std::int64_t> expert_rows) const {
  SY_CHECK(x.defined()) << op << ": x is not set";
  check_contiguous(op, "x", x);
  check_float(op, "x", x);
  const std::int64_t experts = config_.local_experts, d = config_.d_model;
  if (expert_rows.empty()) {
    SY_CHECK(x.dim() == 3 && x.size(0) == experts && x.size(2) == d)
        << op << ": capacity layout (no expert_rows) needs x [E_l = " << experts << ", C, d = " << d << "], got "
        << x.describe();
    return false;
  }
  SY_CHECK(std::int64_t(expert_rows.size()) == experts)
      << op << ": expert_rows has " << expert_rows.size() << " counts for " << experts << " local experts";
  std::int64_t rows = 0;
  for (std::int64_t count : expert_rows) rows += count;
  SY_CHECK(x.dim() == 2 && x.size(0) == rows && x.size(1) == d)
      << op << ": dropless layout needs x [R = " << rows << " (the sum of expert_rows), d = " << d << "], got "
      << x.describe();
  return true;
}

bool ExpertFFN::check_inputs(const char* op, const Tensor& x, std::span<const std::int64_t> expert_rows,
                             const ExpertWeights& weights, const ExpertActivations& saved) const {
  const bool dropless = check_layout(op, x, expert_rows);
  const std::int64_t experts = config_.local_experts, d = config_.d_model, f = config_.d_ff, f_in = config_.d_in();
  const ExpertBufferShapes shapes = buffer_shapes(x.shape());
  check_tensor(op, "w_in", weights.w_in, {experts, d, f_in}, x.dtype());
  check_tensor(op, "w_out", weights.w_out, {experts, f, d}, x.dtype());
  check_tensor(op, "h", saved.h, shapes.h, x.dtype());
  check_tensor(op, "act", saved.act, shapes.act, x.dtype());
  return dropless;
}

void ExpertFFN::forward(const Tensor& x, std::span<const std::int64_t> expert_rows, const ExpertWeights& weights,
                        const ExpertActivations& saved, const Tensor& y, StreamRef stream) const {
  const char* op = "ExpertFFN::forward";
  const bool dropless = check_inputs(op, x, expert_rows, weights, saved);
  check_tensor(op, "y", y, x.shape(), x.dtype());

  if (gelu_in_epilogue(dropless)) {
    gemm_gelu(x, weights.w_in, saved.h, saved.act, false, stream);  // h = x @ w_in and act = gelu(h), one pass
  } else {
    expert_matmul(dropless, x, weights.w_in, saved.h, expert_rows, false, stream);
    activation_forward(saved.h, saved.act, stream);
  }
  expert_matmul(dropless, saved.act, weights.w_out, y, expert_rows, false, stream);
}

void ExpertFFN::activation_forward(const Tensor& h, const Tensor& act, StreamRef stream) const {
  switch (config_.activation) {
    case ExpertActivation::gelu: gelu_forward(h, act, stream); break;
    case ExpertActivation::relu: relu_forward(h, act, stream); break;
    case ExpertActivation::swiglu: swiglu_forward(as_rows(h), as_rows(act), stream); break;
  }
}

// Reverse order of forward, each weight's gradient next to the input gradient of its GEMM:
//   dact = dy @ w_out^T;  dw_out (+)= act^T @ dy;  dh = act'(h) * dact;
//   dw_in (+)= x^T @ dh;  dx = dh @ w_in^T.
// GELU in the capacity layout computes dh = gelu'(h) * (dy @ w_out^T) with gemm_dgelu, which
// writes the product into dh and applies gelu' there, so no dact buffer is needed. When act is to
// be recomputed, the gelu' pass also writes act = gelu(h) from its one read of h, before dw_out
// needs it; other activations recompute act first.
void ExpertFFN::backward(const Tensor& x, std::span<const std::int64_t> expert_rows, const ExpertWeights& weights,
                         const ExpertActivations& saved, const Tensor& dy, const Tensor& dx,
                         const ExpertWeights& grads, const ExpertScratch& scratch, GradMode mode,
                         StreamRef stream) const {
  const char* op = "ExpertFFN::backward";
  const bool dropless = check_inputs(op, x, expert_rows, weights, saved);
  const std::int64_t experts = config_.local_experts, d = config_.d_model, f = config_.d_ff, f_in = config_.d_in();
  const ExpertBufferShapes shapes = buffer_shapes(x.shape());
  check_tensor(op, "dy", dy, x.shape(), x.dtype());
  check_tensor(op, "dx", dx, x.shape(), x.dtype());
  check_tensor(op, "dw_in", grads.w_in, {experts, d, f_in}, DType::f32);
  check_tensor(op, "dw_out", grads.w_out, {experts, f, d}, DType::f32);
  if (!shapes.dact.empty()) check_tensor(op, "dact", scratch.dact, shapes.dact, x.dtype());
  check_tensor(op, "dh", scratch.dh, shapes.dh, x.dtype());

  if (gelu_in_epilogue(dropless) && saved.recompute_act) {
    expert_matmul(dropless, dy, weights.w_out, scratch.dh, expert_rows, true, stream);  // dact, in dh
    gelu_backward_recompute(saved.h, scratch.dh, scratch.dh, saved.act, stream);       // dh, and act
    expert_weight_grad(dropless, saved.act, dy, grads.w_out, expert_rows, mode, stream);
  } else if (gelu_in_epilogue(dropless)) {
    gemm_dgelu(dy, weights.w_out, saved.h, scratch.dh, true, stream);  // dh = gelu'(h) * (dy @ w_out^T)
    expert_weight_grad(dropless, saved.act, dy, grads.w_out, expert_rows, mode, stream);
  } else {
    if (saved.recompute_act) activation_forward(saved.h, saved.act, stream);
    expert_matmul(dropless, dy, weights.w_out, scratch.dact, expert_rows, true, stream);
    expert_weight_grad(dropless, saved.act, dy, grads.w_out, expert_rows, mode, stream);
    switch (config_.activation) {
      case ExpertActivation::gelu: gelu_backward(saved.h, scratch.dact, scratch.dh, stream); break;
      case ExpertActivation::relu: relu_backward(saved.h, scratch.dact, scratch.dh, stream); break;
      case ExpertActivation::swiglu:
        swiglu_backward(as_rows(saved.h), as_rows(scratch.dact), as_rows(scratch.dh), stream);
        break;
    }
  }
  expert_weight_grad(dropless, x, scratch.dh, grads.w_in, expert_rows, mode, stream);
  expert_matmul(dropless, scratch.dh, weights.w_in, dx, expert_rows, true, stream);
}

}  // namespace sy
