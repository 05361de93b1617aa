// Elementwise ops on CUDA: grid-stride loops, one read of each input and one write. These are
// bandwidth-bound; fused versions (residual + norm) belong to the model's kernels.
#include "core/ops/elementwise_map.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

inline unsigned elementwise_grid(std::int64_t n) {
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  return unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <class S, class D>
__global__ void cast_kernel(const S* src, D* dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x)
    store_f32(dst + i, load_f32(src + i));
}

}  // namespace

void add(const Tensor& a, const Tensor& b, const Tensor& out, StreamRef stream) {
  dispatch_float(a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2(static_cast<const T*>(a.data()), static_cast<const T*>(b.data()), static_cast<T*>(out.data()),
                a.numel(), Sum{}, stream);
  });
}

void cast(const Tensor& src, const Tensor& dst, StreamRef stream) {
  const std::int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype() == dst.dtype()) {
    SY_CUDA(cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToDevice, to_cuda(stream)));
    return;
  }
  dispatch_float(src, [&](auto* src_type) {
    dispatch_float(dst, [&](auto* dst_type) {
      using S = std::remove_pointer_t<decltype(src_type)>;
      using D = std::remove_pointer_t<decltype(dst_type)>;
      cast_kernel<S, D><<<elementwise_grid(n), kBlock, 0, to_cuda(stream)>>>(static_cast<const S*>(src.data()),
                                                                               static_cast<D*>(dst.data()), n);
    });
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
