// AdamW on CUDA: one elementwise kernel over the fp32 master weights, fp32 math in PyTorch's
// order of operations. Bias corrections depend only on the step, so they are computed once on
// the host in double and passed in. One launch covers a whole list of ranges of the flat
// buffers (each with its own weight decay): an optimizer group's decay pattern cuts its buffer
// into about 50 ranges, and one launch per range cost 0.3 ms more per step on an H200, most of
// it in 40 launches of under 20 us each.
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

__device__ __forceinline__ void store4(float* p, const float4& v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float4& v) {
  __nv_bfloat162 pair[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(pair);
}

// The ranges of one launch, in the kernel's parameter space (read through __grid_constant__, so
// indexing it does not copy it per thread). Range r takes blocks [first_block[r],
// first_block[r + 1]); its thread t updates the 4-element vector t (or element t when the buffers
// are not 16-byte aligned), and the thread just past the last whole vector takes the range's
// last numel % 4 elements.
constexpr int kMaxRanges = 128;  // a power of two, for the binary search
static_assert((kMaxRanges & (kMaxRanges - 1)) == 0);
struct RangeTable {
  std::int64_t offset[kMaxRanges];
  std::int64_t numel[kMaxRanges];
  float decay[kMaxRanges];  // 1 - lr * weight_decay
  unsigned first_block[kMaxRanges + 1];
  int count;
};

// copy[i] (if given) = the new param in the copy's dtype. Traffic per element: params, grads,
// m, v read (16 bytes), params, m, v and the copy written (12 bytes + 2 or 4). Bandwidth-bound:
// 16-byte accesses (8 for a bf16 copy); no element is shared between threads, so there is
// nothing to synchronise.
template <class C>
__global__ void adamw_update_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                                    float* __restrict__ v, C* __restrict__ copy, const __grid_constant__ RangeTable table,
                                    bool vectorized, AdamWScalars s) {
  int r = 0;  // the last range whose first block is at or before this one
  for (int step = kMaxRanges / 2; step > 0; step /= 2)  // binary search over a power-of-two span
    if (r + step < table.count && table.first_block[r + step] <= blockIdx.x) r += step;
  const std::int64_t t = std::int64_t(blockIdx.x - table.first_block[r]) * blockDim.x + threadIdx.x;
  const std::int64_t offset = table.offset[r], n = table.numel[r];
  s.decay = table.decay[r];
  // One cached load per thread; the same f32 arithmetic as the CPU reference.
  if (s.clip_sum_squares) s.grad_scale = adamw_clip_scale(s.grad_scale, s.max_grad_norm, *s.clip_sum_squares);
  if (!vectorized) {
    if (t < n) {
      const std::int64_t i = offset + t;
      const float p = adamw_element(params[i], grads[i], m[i], v[i], s);
      if (copy) store_f32(copy + i, p);
    }
    return;
  }
  const std::int64_t vectors = n / 4;
  if (t < vectors) {
    const std::int64_t i = offset / 4 + t;
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
  } else if (t == vectors) {  // the last n % 4 elements
    for (std::int64_t i = offset + 4 * vectors; i < offset + n; ++i) {
      const float p = adamw_element(params[i], grads[i], m[i], v[i], s);
      if (copy) store_f32(copy + i, p);
    }
  }
}

// Threads a range needs: a vector each (plus one for the elements after the last vector), or an
// element each.
std::int64_t range_threads(std::int64_t n, bool vectorized) { return vectorized ? n / 4 + (n % 4 != 0) : n; }

}  // namespace

void adamw_update_ranges(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                         const Tensor& param_copy, const AdamWRange* ranges, std::size_t count,
                         const AdamWParams& hp, StreamRef stream) {
  AdamWScalars s;
  s.beta1 = hp.beta1;
  s.beta2 = hp.beta2;
  s.eps = hp.eps;
  s.grad_scale = hp.grad_scale;
  s.clip_sum_squares = hp.clip_sum_squares.defined() ? hp.clip_sum_squares.ptr<float>() : nullptr;
  s.max_grad_norm = hp.max_grad_norm;
  s.step_size = float(double(hp.lr) / (1.0 - std::pow(double(hp.beta1), hp.step)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(hp.beta2), hp.step)));
  float* pp = params.ptr<float>();
  const float* gp = grads.ptr<float>();
  float* mp = m.ptr<float>();
  float* vp = v.ptr<float>();
  // 16-byte accesses need every f32 array 16-byte aligned, the copy 8- (bf16) or 16-byte (f32),
  // and every range to start on a whole vector.
  auto aligned = [](const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; };
  bool vectorized = aligned(pp, 16) && aligned(gp, 16) && aligned(mp, 16) && aligned(vp, 16);
  if (param_copy.defined()) vectorized = vectorized && aligned(param_copy.data(), 4 * dtype_size(param_copy.dtype()));
  for (std::size_t i = 0; i < count; ++i) vectorized = vectorized && ranges[i].offset % 4 == 0;

  // Up to kMaxRanges non-empty ranges per launch.
  std::size_t next = 0;
  while (next < count) {
    RangeTable table{};
    std::int64_t blocks = 0;
    for (; next < count && table.count < kMaxRanges; ++next) {
      const AdamWRange& r = ranges[next];
      if (r.numel == 0) continue;
      table.offset[table.count] = r.offset;
      table.numel[table.count] = r.numel;
      table.decay[table.count] = float(1.0 - double(hp.lr) * double(r.weight_decay));
      table.first_block[table.count] = unsigned(blocks);
      blocks += (range_threads(r.numel, vectorized) + kBlock - 1) / kBlock;
      ++table.count;
    }
    if (table.count == 0) break;
    SY_CHECK(blocks < (std::int64_t(1) << 31)) << "adamw_update: " << blocks << " blocks exceed the grid's limit";
    table.first_block[table.count] = unsigned(blocks);
    const unsigned grid = unsigned(blocks);
    if (!param_copy.defined()) {
      adamw_update_kernel<float><<<grid, kBlock, 0, to_cuda(stream)>>>(pp, gp, mp, vp, nullptr, table, vectorized, s);
    } else {
      dispatch_float(param_copy, [&](auto* type) {
        using C = std::remove_pointer_t<decltype(type)>;
        adamw_update_kernel<C><<<grid, kBlock, 0, to_cuda(stream)>>>(
            pp, gp, mp, vp, static_cast<C*>(param_copy.data()), table, vectorized, s);
      });
    }
    SY_CUDA_LAUNCH();
  }
}

}  // namespace sy::cuda
