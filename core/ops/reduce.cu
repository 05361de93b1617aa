// Reductions on CUDA. sum_squares is deterministic without a scratch argument: one launch over
// a grid whose size depends only on numel and the device, a partial per block in a static
// device array, and the last block to finish summing the partials in a fixed order (the
// threadFenceReduction pattern of the CUDA samples).
//
// The partials and the arrival counter are per-device globals, so two sum_squares calls must
// never run at the same time on one device: calls on different streams that may overlap are
// not allowed. Calls in one stream are ordered, which is how a gradient norm is built.
#include <climits>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxBlocks = 1024;     // the grid is at most 4 x SMs, below this on current parts
constexpr int kBlocksPerSm = 4;

__device__ float sum_squares_partials[kMaxBlocks];
__device__ unsigned int sum_squares_arrivals = 0;  // reset by the last block of every launch

// out[0] += sum(x^2). Each thread sums its grid-strided elements, the block sums its threads
// (fixed shuffle tree) into partials[block]; the block that arrives last reads all partials in
// index order, adds the total to out[0] and resets the counter. x is read once; every step has
// a fixed order for a given grid, so the same input gives the same bits on every run. The
// __threadfence makes a block's partial visible device-wide before its arrival is counted, and
// the last block reads partials with __ldcg (L2), never a stale L1 line.
template <class T>
__global__ void __launch_bounds__(kBlock) sum_squares_kernel(const T* __restrict__ x, std::int64_t n, float* out) {
  __shared__ float scratch[32];
  __shared__ bool is_last;
  float sum = 0.0f;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x) {
    const float value = load_f32(x + i);
    sum += value * value;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    sum_squares_partials[blockIdx.x] = sum;
    __threadfence();
    is_last = atomicAdd(&sum_squares_arrivals, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // the reading side of the fence pair: partials are read after the count
  float total = 0.0f;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) total += __ldcg(&sum_squares_partials[b]);
  total = block_sum(total, scratch);
  if (threadIdx.x == 0) {
    out[0] += total;
    sum_squares_arrivals = 0;
  }
}

// Fixed for a device and numel: min(4 x SMs, blocks needed to give every thread an element).
unsigned sum_squares_grid(std::int64_t n) {
  const int sms = current_device_facts().sms;
  std::int64_t blocks = (n + kBlock - 1) / kBlock;
  if (blocks > std::int64_t(kBlocksPerSm) * sms) blocks = std::int64_t(kBlocksPerSm) * sms;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return unsigned(blocks);
}

}  // namespace

void sum_squares(const Tensor& x, const Tensor& out, StreamRef stream) {
  const std::int64_t n = x.numel();
  if (n == 0) return;
  const unsigned grid = sum_squares_grid(n);
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    sum_squares_kernel<T><<<grid, kBlock, 0, to_cuda(stream)>>>(static_cast<const T*>(x.data()), n,
                                                                  out.ptr<float>());
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
