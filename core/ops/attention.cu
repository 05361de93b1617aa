// Causal attention on CUDA: strided-batched cuBLAS GEMMs (sy::cuda::gemm_batched) around a
// fused masked softmax (forward) and softmax backward. For GQA, the g = Hq / Hkv query heads
// that share a kv head are contiguous in [B, Hq, T, D], so per (batch, kv head) the group's
// queries are one [g*T, D] matrix and each product is a single strided-batched GEMM with
// batch count B * Hkv: row r of a group's [g*T, T] scores is head r / T at query position r % T,
// exactly the layout of probs for those g heads.
#include <climits>
#include <cmath>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // 8 warps, one row each

// probs row -> softmax, in place. Row `row` of probs [B*Hq*T, T] holds scale * q . k for query
// position t = row % T; entries j <= t become softmax values, j > t exactly 0. One warp per row
// because rows are short (T <= a few thousand) and independent: three passes over the row
// (max, sum of exp, write), the second and third served from L1; the row is written once.
// fp32 math; a bf16 row was already rounded to bf16 by the scores GEMM, as in PyTorch's math path.
template <class T>
__global__ void causal_softmax_kernel(T* probs, std::int64_t rows, int seq) {
  const std::int64_t row = std::int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  T* p = probs + row * seq;
  const int t = int(row % seq);  // columns 0..t are visible
  float row_max = -INFINITY;
  for (int j = lane; j <= t; j += 32) row_max = fmaxf(row_max, load_f32(p + j));
  row_max = warp_max(row_max);  // finite: column 0 is always visible
  float sum = 0.0f;
  for (int j = lane; j <= t; j += 32) sum += expf(load_f32(p + j) - row_max);
  const float inv_sum = 1.0f / warp_sum(sum);
  // Each lane rewrites only the columns it read, so the in-place update needs no barrier.
  for (int j = lane; j < seq; j += 32) store_f32(p + j, j <= t ? expf(load_f32(p + j) - row_max) * inv_sum : 0.0f);
}

// dprobs row -> dS, in place: dS = P * (dP - sum_j P * dP) * scale for j <= t, 0 above the
// diagonal. Same shape as the forward kernel: one warp per row, P and dP each read twice (the
// second time from L1), dS written once. Folding in `scale` lets the dq and dk GEMMs use alpha 1.
template <class T>
__global__ void causal_softmax_backward_kernel(const T* probs, T* dprobs, std::int64_t rows, int seq, float scale) {
  const std::int64_t row = std::int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* p = probs + row * seq;
  T* dp = dprobs + row * seq;
  const int t = int(row % seq);
  float dot = 0.0f;
  for (int j = lane; j <= t; j += 32) dot += load_f32(p + j) * load_f32(dp + j);
  dot = warp_sum(dot);
  for (int j = lane; j < seq; j += 32)
    store_f32(dp + j, j <= t ? load_f32(p + j) * (load_f32(dp + j) - dot) * scale : 0.0f);
}

// A contiguous [B, H, T, X] tensor as B * Hkv batch items of [(H / Hkv) * T, X]: for q-shaped
// tensors each item is the g query heads of one kv head, for k-shaped ones that kv head alone.
Tensor as_groups(const Tensor& t, std::int64_t items) {
  return t.reshape({items, t.numel() / items / t.size(3), t.size(3)});
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& probs,
                       StreamRef stream) {
  const std::int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1), seq = q.size(2), dim = q.size(3);
  if (batch == 0 || heads == 0 || seq == 0) return;
  SY_CHECK(seq <= INT_MAX) << "attention_forward: sequence length " << seq
                           << " exceeds the 32-bit row length of the softmax kernels";
  const std::int64_t items = batch * kv_heads, rows = batch * heads * seq;
  const float scale = 1.0f / std::sqrt(float(dim));
  const Tensor q_groups = as_groups(q, items), probs_groups = as_groups(probs, items);
  // scores [gT, T] = scale * Qgroup [gT, D] K^T, written straight into probs (q's dtype).
  cuda::gemm_batched(q_groups, as_groups(k, items), probs_groups, false, true, scale, 0.0f, stream);
  dispatch_float(q, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    causal_softmax_kernel<T><<<grid_for(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, to_cuda(stream)>>>(
        static_cast<T*>(probs.data()), rows, int(seq));
  });
  SY_CUDA_LAUNCH();
  // out [gT, D] = Pgroup [gT, T] V [T, D]; the masked entries are exact zeros.
  cuda::gemm_batched(probs_groups, as_groups(v, items), as_groups(out, items), false, false, 1.0f, 0.0f, stream);
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dprobs, StreamRef stream) {
  const std::int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1), seq = q.size(2), dim = q.size(3);
  if (batch == 0 || heads == 0 || seq == 0) return;
  SY_CHECK(seq <= INT_MAX) << "attention_backward: sequence length " << seq
                           << " exceeds the 32-bit row length of the softmax kernels";
  const std::int64_t items = batch * kv_heads, rows = batch * heads * seq;
  const float scale = 1.0f / std::sqrt(float(dim));
  const Tensor q_groups = as_groups(q, items), k_groups = as_groups(k, items);
  const Tensor probs_groups = as_groups(probs, items), dprobs_groups = as_groups(dprobs, items);
  const Tensor dout_groups = as_groups(dout, items);
  // dV [T, D] = Pgroup^T [T, gT] dOgroup [gT, D]: the sum over the group's heads is the GEMM's K.
  cuda::gemm_batched(probs_groups, dout_groups, as_groups(dv, items), true, false, 1.0f, 0.0f, stream);
  // dPgroup [gT, T] = dOgroup [gT, D] V^T.
  cuda::gemm_batched(dout_groups, as_groups(v, items), dprobs_groups, false, true, 1.0f, 0.0f, stream);
  dispatch_float(q, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    causal_softmax_backward_kernel<T><<<grid_for(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, to_cuda(stream)>>>(
        static_cast<const T*>(probs.data()), static_cast<T*>(dprobs.data()), rows, int(seq), scale);
  });
  SY_CUDA_LAUNCH();
  // dK [T, D] = dSgroup^T [T, gT] Qgroup [gT, D]; dQgroup [gT, D] = dSgroup [gT, T] K [T, D].
  cuda::gemm_batched(dprobs_groups, q_groups, as_groups(dk, items), true, false, 1.0f, 0.0f, stream);
  cuda::gemm_batched(dprobs_groups, k_groups, as_groups(dq, items), false, false, 1.0f, 0.0f, stream);
}

}  // namespace sy::cuda
