// Random fills on CUDA: each thread draws the Philox counter of its element, so the values are
// those of the CPU path (core/ops/init.cpp) bit for bit (uniform) or to 1 ulp (normal).
#include "core/ops/cuda_common.cuh"
#include "core/rng.h"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

template <class T, bool kNormal>
__global__ void fill_kernel(T* out, std::int64_t n, RngKey key, float a, float b, std::uint64_t offset) {
  const std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  // The CPU path's expression with its rounding: explicit _rn ops keep nvcc from fusing an FMA.
  const float value = kNormal ? __fadd_rn(a, __fmul_rn(b, philox_normal(key, offset + std::uint64_t(i))))
                              : __fadd_rn(a, __fmul_rn(b - a, philox_uniform(key, offset + std::uint64_t(i))));
  store_f32(out + i, value);
}

template <bool kNormal>
void fill(const Tensor& t, RngKey key, float a, float b, std::uint64_t offset, StreamRef stream) {
  const std::int64_t n = t.numel();
  if (n == 0) return;
  dispatch_float(t, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    fill_kernel<T, kNormal><<<grid_for(n, kBlock), kBlock, 0, to_cuda(stream)>>>(static_cast<T*>(t.data()), n, key, a,
                                                                                  b, offset);
  });
  SY_CUDA_LAUNCH();
}

}  // namespace

void fill_uniform(const Tensor& t, RngKey key, float low, float high, std::uint64_t index_offset, StreamRef stream) {
  fill<false>(t, key, low, high, index_offset, stream);
}

void fill_normal(const Tensor& t, RngKey key, float mean, float std, std::uint64_t index_offset, StreamRef stream) {
  fill<true>(t, key, mean, std, index_offset, stream);
}

}  // namespace sy::cuda
