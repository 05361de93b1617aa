// x *= factor: one read and one write per element, a grid-stride loop (bandwidth-bound; it runs
// once per bucket on the communication stream, after the bucket's reduction).
#include "core/ops/cuda_common.cuh"
#include "parallel/gradient_scale.h"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

__global__ void scale_kernel(float* x, float factor, std::int64_t n) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) x[i] *= factor;
}

}  // namespace

void scale_in_place(const Tensor& x, float factor, StreamRef stream) {
  const std::int64_t n = x.numel();
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  scale_kernel<<<unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), kBlock, 0, to_cuda(stream)>>>(
      static_cast<float*>(x.data()), factor, n);
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
