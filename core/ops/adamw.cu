// AdamW on CUDA: one elementwise kernel over the fp32 master weights, fp32 math in PyTorch's
// order of operations. Bias corrections depend only on the step, so they are computed once on
// the host in double and passed in.
#include <cmath>

#include "core/ops/adamw_scale.h"
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

struct AdamWScalars {
  float beta1, beta2, eps, grad_scale;
  const float* clip_sum_squares;  // null: no clipping on the device
  float max_grad_norm;
  float decay;                  // 1 - lr * weight_decay
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

// One element: param = param * decay - step_size * m / (sqrt(v) / sqrt(bc2) + eps) after the
// moment updates; returns the new param.
__device__ __forceinline__ float adamw_element(float& param, float grad, float& m, float& v, const AdamWScalars& s) {
  const float g = grad * s.grad_scale;  // the clipped scale, set by the kernel
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  param = param * s.decay - s.step_size * m / (sqrtf(v) / s.bias_correction2_sqrt + s.eps);
  return param;
}

// copy[i] (if given) = the new param in the copy's dtype. Traffic per element: params, grads,
// m, v read (16 bytes), params, m, v and the copy written (12 bytes + 2 or 4). Bandwidth-bound:
// each thread moves 4 consecutive elements per step as 16-byte accesses (8 for a bf16 copy);
// a tail of fewer than 4 elements, or unaligned tensors, go one element at a time. No element
// is shared between threads, so there is nothing to synchronise.
__device__ __forceinline__ void store4(float* p, const float4& v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float4& v) {
  __nv_bfloat162 pair[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(pair);
}

template <class C>
__global__ void adamw_update_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                                    float* __restrict__ v, C* __restrict__ copy, std::int64_t n, std::int64_t vectors,
                                    AdamWScalars s) {
  // One cached load per thread; the same f32 arithmetic as the CPU reference.
  if (s.clip_sum_squares) s.grad_scale = adamw_clip_scale(s.grad_scale, s.max_grad_norm, *s.clip_sum_squares);
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  for (std::int64_t i = first; i < vectors; i += stride) {
    float4 p = reinterpret_cast<float4*>(params)[i];
    const float4 g = reinterpret_cast<const float4*>(grads)[i];
    float4 mv = reinterpret_cast<float4*>(m)[i], vv = reinterpret_cast<float4*>(v)[i];
    adamw_element(p.x, g.x, mv.x, vv.x, s);
    adamw_element(p.y, g.y, mv.y, vv.y, s);
    adamw_element(p.z, g.z, mv.z, vv.z, s);
    adamw_element(p.w, g.w, mv.w, vv.w, s);
    reinterpret_cast<float4*>(params)[i] = p;
    reinterpret_cast<float4*>(m)[i] = mv;
    reinterpret_cast<float4*>(v)[i] = vv;
    if (copy) store4(copy + 4 * i, p);
  }
  for (std::int64_t i = 4 * vectors + first; i < n; i += stride) {
    const float p = adamw_element(params[i], grads[i], m[i], v[i], s);
    if (copy) store_f32(copy + i, p);
  }
}

inline unsigned adamw_grid(std::int64_t n) {
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  return unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                  const Tensor& param_copy, const AdamWParams& hp, StreamRef stream) {
  const std::int64_t n = params.numel();
  if (n == 0) return;
  AdamWScalars s;
  s.beta1 = hp.beta1;
  s.beta2 = hp.beta2;
  s.eps = hp.eps;
  s.grad_scale = hp.grad_scale;
  s.clip_sum_squares = hp.clip_sum_squares.defined() ? hp.clip_sum_squares.ptr<float>() : nullptr;
  s.max_grad_norm = hp.max_grad_norm;
  s.decay = float(1.0 - double(hp.lr) * double(hp.weight_decay));
  s.step_size = float(double(hp.lr) / (1.0 - std::pow(double(hp.beta1), hp.step)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(hp.beta2), hp.step)));
  float* pp = params.ptr<float>();
  const float* gp = grads.ptr<float>();
  float* mp = m.ptr<float>();
  float* vp = v.ptr<float>();
  // 16-byte accesses need every f32 array 16-byte aligned and the copy 8- (bf16) or 16-byte (f32).
  auto aligned = [](const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; };
  bool vectorized = aligned(pp, 16) && aligned(gp, 16) && aligned(mp, 16) && aligned(vp, 16);
  if (param_copy.defined()) vectorized = vectorized && aligned(param_copy.data(), 4 * dtype_size(param_copy.dtype()));
  const std::int64_t vectors = vectorized ? n / 4 : 0;
  const unsigned grid = adamw_grid(vectors > 0 ? vectors : n);
  if (!param_copy.defined()) {
    adamw_update_kernel<float><<<grid, kBlock, 0, to_cuda(stream)>>>(pp, gp, mp, vp, nullptr, n, vectors, s);
  } else {
    dispatch_float(param_copy, [&](auto* type) {
      using C = std::remove_pointer_t<decltype(type)>;
      adamw_update_kernel<C><<<grid, kBlock, 0, to_cuda(stream)>>>(pp, gp, mp, vp, static_cast<C*>(param_copy.data()),
                                                                  n, vectors, s);
    });
  }
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
