// The op set of a decoder training step. Every op is a free function that dispatches on the
// tensors' device: a plain CPU reference (double accumulation, any of f32/f64/bf16) or a CUDA
// kernel (f32 or bf16). Shapes use named axes: N rows (tokens), C channels, B batch, H heads,
// T sequence, D head dim, V vocabulary.
//
// Conventions
// - Outputs are written, never read, unless the op says it accumulates.
// - Parameter gradients (dweight) are f32. An op that writes one takes a GradMode: the first
//   write of a step overwrites the gradient, so nothing zeroes it between steps, and later writes
//   (the next micro-batches, a tied weight's second user) add to it. Overwrite writes every
//   element, also where the op has no work (a rank's empty batch, a token-less expert), and never
//   reads the old values (they may be anything, NaN included). For GEMMs the mode is beta (0 or 1:
//   grad_beta). Activation gradients are overwritten and have the activation's dtype.
// - Saved statistics (rstd, lse) are f32.
// - All tensors of one call live on one device and are contiguous unless noted.
#pragma once

#include <cstdint>
#if __cplusplus >= 202002L
#include <span>
#endif

#include "core/rng.h"
#include "core/stream.h"
#include "core/tensor.h"

namespace sy {

// How an op writes a parameter gradient (see the conventions above).
enum class GradMode : bool { overwrite, accumulate };
// The GEMM beta that writes a gradient in `mode`: c = a @ b (0) or c += a @ b (1).
inline float grad_beta(GradMode mode) { return mode == GradMode::accumulate ? 1.0f : 0.0f; }

// ---- GEMM ---------------------------------------------------------------------------------
// c = alpha * op(a) @ op(b) + beta * c, row-major. a: [M, K] (or [K, M] with trans_a),
// b: [K, N] (or [N, K] with trans_b), c: [M, N]. a and b share a dtype; c is that dtype or f32.
// Rows may be strided (leading dimension = stride(-2)); the last axis must be contiguous.
// With beta = 0, c is not read. CUDA: cuBLAS, fp32 accumulation.
void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha = 1.0f,
          float beta = 0.0f, StreamRef stream = {});
// The same for a batch: a [batch, ...], b [batch, ...], c [batch, ...]; stride(0) is the batch
// stride and may be 0 for a operand shared by every batch item (e.g. one weight).
void gemm_batched(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha = 1.0f,
                  float beta = 0.0f, StreamRef stream = {});
// GEMM with GELU (tanh approximation, exactly the function of gelu_forward) in its epilogue: an
// FFN's first linear layer and the input gradient through it, without a separate elementwise
// pass over the [M, N] activations. Plain when a is 2-D, batched when it is 3-D (the expert
// FFNs: batch = local experts, M = capacity, K = d_model, N = d_ff):
//   a: [M, K] or [batch, M, K]; b: [K, N], or [N, K] with trans_b, with the batch axis when a
//   has it; pre, act, dpre: [M, N] or [batch, M, N], contiguous and distinct.
// a and b may be laid out as for gemm / gemm_batched (strided rows, batch stride 0 for a shared
// operand); every tensor has a's dtype. CPU: any float dtype, as gemm then the GELU op. CUDA: bf16
// is one cuBLASLt matmul (fp32 accumulation) with GELU in its epilogue; f32, and bf16 shapes the
// epilogue cannot take (named once on stderr), run as gemm then the GELU kernel.
// Forward: pre = a @ op(b) (the pre-activation, saved for the backward), act = gelu(pre).
void gemm_gelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& act, bool trans_b,
               StreamRef stream = {});
// Backward: dpre = (a @ op(b)) * gelu'(pre), a @ op(b) being the gradient of act (in an FFN,
// dy [M, d] @ w_out^T with w_out [F, d] and trans_b). pre is read, dpre written. Batched (3-D)
// calls run as the GEMM into dpre, then gelu' in place: cuBLASLt's batched DGELU was slower.
void gemm_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& dpre, bool trans_b,
                StreamRef stream = {});
enum class GeluEpilogue { forward, backward };  // gemm_gelu, gemm_dgelu
// Whether that op, with these arguments (out: act or dpre), runs as one fused cuBLASLt matmul on
// this device: false on the CPU, for f32, and for shapes that take the unfused route. Plans the
// call (and caches the plan) as the op does. For tests and benchmarks that must know the path.
bool gemm_gelu_fused(GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                     bool trans_b);
#if __cplusplus >= 202002L  // the CUDA sources are C++17; they reach these through core/ops/cuda_ops.h
// Grouped GEMM over row blocks, for experts that own different numbers of rows (dropless MoE).
// Group g owns the rows [r_g, r_g + group_rows[g]) of a and c, r_g = group_rows[0] + ... +
// group_rows[g-1]; group_rows is a host array of G counts (zeros allowed) summing to R:
//   c_g = alpha * a_g @ op(b[g]) + beta * c_g.
// a: [R, K]; b: [G, K, N] (or [G, N, K] with trans_b); c: [R, N]. dtypes as for gemm; all three
// contiguous. This is the forward (x @ w) and the input gradient (dy @ w^T) of an expert layer.
void gemm_grouped(const Tensor& a, const Tensor& b, const Tensor& c, std::span<const std::int64_t> group_rows,
                  bool trans_b, float alpha = 1.0f, float beta = 0.0f, StreamRef stream = {});
// The weight-gradient form, whose reduction runs over each group's rows:
//   c[g] = alpha * a_g^T @ b_g + beta * c[g].
// a: [R, K]; b: [R, N]; c: [G, K, N]. An empty group gives c[g] = beta * c[g] (zero at beta = 0,
// c not read). With c f32 it writes a weight gradient: dw[g] = x_g^T @ dy_g at beta = 0
// (GradMode::overwrite), dw[g] += x_g^T @ dy_g at beta = 1.
void gemm_grouped_trans_a(const Tensor& a, const Tensor& b, const Tensor& c, std::span<const std::int64_t> group_rows,
                          float alpha = 1.0f, float beta = 0.0f, StreamRef stream = {});
#endif

// ---- embedding ----------------------------------------------------------------------------
// out[n, :] = weight[tokens[n], :]. tokens: [N] i32 in [0, V); weight: [V, C]; out: [N, C].
void embedding_forward(const Tensor& tokens, const Tensor& weight, const Tensor& out, StreamRef stream = {});
// dweight[v, :] (+)= sum of dout[n, :] over the rows n with tokens[n] == v. dweight: [V, C] f32;
// overwrite also writes zero rows for the tokens the batch does not hold.
void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dweight, GradMode mode,
                        StreamRef stream = {});

// ---- RMSNorm ------------------------------------------------------------------------------
// y = x / sqrt(mean(x^2) + eps) * weight. x, y: [N, C]; weight: [C]; rstd: [N] f32 (saved).
void rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps,
                     StreamRef stream = {});
// dx: [N, C] (written); dweight: [C] f32, written or added to by `mode`.
void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                      const Tensor& dweight, GradMode mode, StreamRef stream = {});
// A pre-norm block's residual add fused into the norm that follows it: sum = a + b (the residual
// stream, rounded to its dtype), y = rmsnorm(sum). Equal to add then rmsnorm_forward, one pass
// over [N, C] cheaper. a, b, sum, y: [N, C]; sum may alias a or b (the residual stream can take
// the buffer of the branch output it absorbs).
void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& sum, const Tensor& weight, const Tensor& y,
                         const Tensor& rstd, float eps, StreamRef stream = {});
// rmsnorm_backward whose input gradient is added to the residual stream's gradient instead of
// written: dresidual += dx (always, whatever `mode`). dresidual: [N, C]; dweight: [C] f32,
// written or added to by `mode`.
void rmsnorm_backward_residual(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                               const Tensor& dresidual, const Tensor& dweight, GradMode mode, StreamRef stream = {});

// ---- RoPE ---------------------------------------------------------------------------------
// Rotary position embedding on x: [B, H, T, D] (D even), position t = index along T.
// Pairs are (i, i + D/2) ("rotate half"); angle = t * theta^(-2i/D). x and y are views with a
// contiguous D and any B, H, T strides (the same for both), so heads can be rotated in place
// inside a token-major [B*T, H*D] matrix; y may alias x.
void rope_forward(const Tensor& x, const Tensor& y, float theta, StreamRef stream = {});
// The transpose: rotation by -angle. dx may alias dy.
void rope_backward(const Tensor& dy, const Tensor& dx, float theta, StreamRef stream = {});

// ---- causal attention (MHA / GQA / MQA) ---------------------------------------------------
// q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] with Hkv dividing Hq (query head h reads kv head
// h / (Hq / Hkv)); out: [B, Hq, T, D]; probs: [B, Hq, T, T] saved softmax (masked entries 0).
// scale = 1/sqrt(D). CUDA: batched cuBLAS GEMMs and a fused masked softmax.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& probs,
                       StreamRef stream = {});
// dq, dk, dv written. dprobs: [B, Hq, T, T] scratch of q's dtype.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dprobs,
                        StreamRef stream = {});

// ---- flash attention (causal MHA / GQA / MQA, nothing of size [T, T] saved) --------------
// Same q, k, v, out as above; lse: [B, Hq, T] f32, each row's natural log-sum-exp of the scaled
// scores (saved for the backward). CPU: any float dtype; CUDA: bf16 with head dim 64 or 128
// (flash_attention_supported says), fused tensor-core kernels.
// q, k, v, out (and dout, dq, dk, dv) are views: D contiguous, any B, H, T strides (on CUDA,
// 16-byte aligned with strides a multiple of 8). So attention reads q, k, v in place from the
// token-major qkv projection, [B*T, (Hq + 2 Hkv) * D], and writes out (and dq, dk, dv) straight
// into token-major rows, with no head-layout copies. lse and scratch are contiguous.
bool flash_attention_supported(Device device, DType dtype, std::int64_t head_dim);
bool flash_attention_supported(const Tensor& q);
void flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                             StreamRef stream = {});
// The same forward on Hopper's warpgroup MMA (wgmma): CUDA, bf16, head dim 64, an sm_90 GPU
// (flash_attention_wgmma_supported says). Same arguments and results as flash_attention_forward
// up to rounding. `switchyard bench ops` times the two side by side; training keeps
// flash_attention_forward until this one has measured faster.
bool flash_attention_wgmma_supported(const Tensor& q);
void flash_attention_forward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                   const Tensor& lse, StreamRef stream = {});
// The f32 scratch the backward needs for q's shape and device: each row's delta and, on CUDA,
// the dS tiles of the causal triangle in bf16 (B Hq T(T+64)/2 elements: 214 MB at B 16, Hq 12,
// T 1024), which turn dQ into one product.
Shape flash_attention_scratch_shape(const Tensor& q);
// dq, dk, dv written; scratch: f32 of flash_attention_scratch_shape(q). Deterministic: no atomics.
void flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                              const Tensor& dv, const Tensor& scratch, StreamRef stream = {});
// The same with the dK/dV kernel on wgmma (where flash_attention_wgmma_supported), like
// flash_attention_forward_wgmma not yet what training runs.
void flash_attention_backward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv, const Tensor& scratch, StreamRef stream = {});

// ---- head layouts (between the attention block's linear layers and core attention) --------
// Token-major rows hold head h's D columns contiguously at h*D; head-major is [B, H, T, D].
// All four are pure copies (any float dtype) and write their whole output.
// qkv: [B*T, (Hq + 2 Hkv) * D] with columns [q heads | k heads | v heads] -> q: [B, Hq, T, D],
// k, v: [B, Hkv, T, D]. B, Hq, T, D come from q's shape, Hkv from k's.
void split_qkv_heads(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, StreamRef stream = {});
// The exact inverse: dqkv written from dq, dk, dv.
void merge_qkv_heads(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dqkv, StreamRef stream = {});
// x: [B, H, T, D] -> y: [B*T, H*D], the input of the attention output projection.
void merge_heads(const Tensor& x, const Tensor& y, StreamRef stream = {});
// The inverse: dy: [B*T, H*D] -> dx: [B, H, T, D].
void split_heads(const Tensor& dy, const Tensor& dx, StreamRef stream = {});

// ---- activations --------------------------------------------------------------------------
// GELU, tanh approximation. x, y: same shape. In the backward, dx may alias dy (gemm_dgelu's
// unfused routes apply gelu' in place).
void gelu_forward(const Tensor& x, const Tensor& y, StreamRef stream = {});
void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream = {});
// gelu_backward that also recomputes the forward from the same read of x, for a backward that did
// not keep y: dx = gelu'(x) * dy and y = gelu(x). dx may alias dy; y aliases neither x nor dy.
void gelu_backward_recompute(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& y,
                             StreamRef stream = {});
void relu_forward(const Tensor& x, const Tensor& y, StreamRef stream = {});
void relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream = {});
// SwiGLU: x: [N, 2F] holding [gate | up]; y: [N, F] = silu(gate) * up.
void swiglu_forward(const Tensor& x, const Tensor& y, StreamRef stream = {});
// dx: [N, 2F] = [dgate | dup].
void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream = {});

// ---- elementwise --------------------------------------------------------------------------
// out = a + b (residual add; its backward passes the gradient to both inputs unchanged).
// out may alias a or b.
void add(const Tensor& a, const Tensor& b, const Tensor& out, StreamRef stream = {});
// out = factor * x; out may alias x (in-place scaling, e.g. gradient averaging). x, out: same
// shape and dtype.
void scale(const Tensor& x, float factor, const Tensor& out, StreamRef stream = {});
// dst = src converted to dst's dtype (f32 <-> bf16, f64 on CPU), same numel.
void cast(const Tensor& src, const Tensor& dst, StreamRef stream = {});

// ---- loss ---------------------------------------------------------------------------------
// Fused softmax cross-entropy over the vocabulary. logits: [N, V]; targets: [N] i32;
// losses: [N] f32 (0 where target == ignore_index); lse: [N] f32 log-sum-exp (saved).
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor& lse,
                           int ignore_index, StreamRef stream = {});
// dlogits = (softmax(logits) - onehot(target)) * grad_scale, 0 on ignored rows; grad_scale is
// dloss for every token (e.g. 1 / number of counted tokens). dlogits may alias logits.
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dlogits,
                            float grad_scale, int ignore_index, StreamRef stream = {});
// Both, for training: losses and lse as cross_entropy_forward, then dlogits as
// cross_entropy_backward with grad_scale; dlogits may alias logits.
void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                    const Tensor& lse, const Tensor& dlogits, float grad_scale, int ignore_index,
                                    StreamRef stream = {});

// ---- optimizer ----------------------------------------------------------------------------
struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: param -= lr * weight_decay * param
  int step = 1;               // 1-based, for bias correction
  float grad_scale = 1.0f;    // multiplies the gradient first (clipping, loss scaling)
  // Clipping read on the device, so the host never waits for the norm: when set, [1] f32 on the
  // params' device holding the sum of squared gradients, and the gradient is also multiplied by
  // min(1, max_grad_norm / (sqrt(sum) + 1e-6)), computed in f32.
  Tensor clip_sum_squares;
  float max_grad_norm = 0.0f;
};
// AdamW on fp32 master weights. params, grads, m, v: [n] f32. param_copy (optional, may be
// undefined): [n] bf16 or f32, receives the updated weights for the compute copy.
void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                  const Tensor& param_copy, const AdamWParams& hp, StreamRef stream = {});
// Elements [offset, offset + numel) of adamw_update_ranges' flat buffers, with their own decay.
struct AdamWRange {
  std::int64_t offset = 0;
  std::int64_t numel = 0;
  float weight_decay = 0.0f;
};
// adamw_update of each range's slice of the flat buffers, with hp.weight_decay replaced by the
// range's: the same bits as one adamw_update per range, in one pass (one launch on CUDA) however
// many ranges an optimizer group's weight-decay pattern cuts its buffer into. Ranges ascend and
// do not overlap.
#if __cplusplus >= 202002L
void adamw_update_ranges(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                         const Tensor& param_copy, std::span<const AdamWRange> ranges, const AdamWParams& hp,
                         StreamRef stream = {});
#endif

// ---- reductions ---------------------------------------------------------------------------
// out[0] += sum(x^2) in fp32 (fp64 on CPU); out: [1] f32, on x's device. Deterministic: the
// same input gives the same bits every run. Chain calls to build a global gradient norm.
void sum_squares(const Tensor& x, const Tensor& out, StreamRef stream = {});
// out[0] += the squares of every part, one dtype, in one pass (one launch on CUDA for up to 64
// parts); on CPU exactly sum_squares of each part in turn. Deterministic for a given list.
#if __cplusplus >= 202002L
void sum_squares(std::span<const Tensor> parts, const Tensor& out, StreamRef stream = {});
#endif

// ---- random fills (Philox, identical on CPU and GPU for the same key) -----------------------
// Element i of t (flat index + index_offset) gets the number drawn for counter i.
void fill_uniform(const Tensor& t, RngKey key, float low, float high, std::uint64_t index_offset = 0,
                  StreamRef stream = {});
void fill_normal(const Tensor& t, RngKey key, float mean, float std, std::uint64_t index_offset = 0,
                 StreamRef stream = {});

}  // namespace sy
