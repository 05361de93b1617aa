// out = factor * x on CUDA: one read and one write per element in a grid-stride loop
// (bandwidth-bound). Element i is read before it is written, so out may alias x.
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

template <class T>
__global__ void scale_kernel(const T* x, float factor, T* out, std::int64_t n) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    store_f32(out + i, factor * load_f32(x + i));
}

}  // namespace

void scale(const Tensor& x, float factor, const Tensor& out, StreamRef stream) {
  const std::int64_t n = x.numel();
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    scale_kernel<T><<<unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), kBlock, 0, to_cuda(stream)>>>(
        static_cast<const T*>(x.data()), factor, static_cast<T*>(out.data()), n);
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
