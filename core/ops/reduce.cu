// Reductions on CUDA. sum_squares is deterministic without a scratch argument: one launch over
// a grid whose size depends only on numel and the device, a partial per block in a static
// device array, and the last block to finish summing the partials in a fixed order (the
// threadFenceReduction pattern of the CUDA samples).
//
// The partials and the arrival counter are per-device globals, so two sum_squares calls must
// never run at the same time on one device: calls on different streams that may overlap are
// not allowed. Calls in one stream are ordered, which is how a gradient norm is built.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxBlocks = 1024;     // the grid is at most 4 x SMs, below this on current parts
constexpr int kBlocksPerSm = 4;

__device__ float sum_squares_partials[kMaxBlocks];
__device__ unsigned int sum_squares_arrivals = 0;  // reset by the last block of every launch

// kVec consecutive elements as one 16-byte load.
template <class T, int kVec>
struct alignas(16) Pack {
  T v[kVec];
};

template <class T>
__device__ __forceinline__ float square(const T& x) {
  const float value = load_f32(&x);
  return value * value;
}

// out[0] += sum(x^2). The elements before the first 16-byte boundary and after the last whole
// pack go to the first threads; the packs in between are grid-strided 16-byte loads, four in
// flight per thread (one 4-byte load at a time reached about 2.4 TB/s). Each thread sums its
// elements, the block sums its threads (fixed shuffle tree) into partials[block]; the block that
// arrives last reads all partials in index order, adds the total to out[0] and resets the
// counter. x is read once; every step has a fixed order for a given grid and address, so the
// same input gives the same bits on every run. The __threadfence makes a block's partial visible
// device-wide before its arrival is counted, and the last block reads partials with __ldcg (L2),
// never a stale L1 line.
template <class T>
__global__ void __launch_bounds__(kBlock) sum_squares_kernel(const T* __restrict__ x, std::int64_t n, float* out) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  __shared__ bool is_last;
  const std::int64_t thread = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x;
  const std::int64_t threads = std::int64_t(gridDim.x) * blockDim.x;
  const auto misaligned = std::int64_t(reinterpret_cast<std::uintptr_t>(x) % 16 / sizeof(T));
  const std::int64_t head = misaligned == 0 ? 0 : std::min<std::int64_t>(n, kVec - misaligned);
  const std::int64_t packs = (n - head) / kVec, tail = head + packs * kVec;
  float sum = 0.0f;
  if (thread < head) sum += square(x[thread]);
  if (thread < n - tail) sum += square(x[tail + thread]);
  const auto* p = reinterpret_cast<const Pack<T, kVec>*>(x + head);
  std::int64_t i = thread;
  for (; i + 3 * threads < packs; i += 4 * threads) {
    const Pack<T, kVec> a = p[i], b = p[i + threads], c = p[i + 2 * threads], d = p[i + 3 * threads];
#pragma unroll
    for (int k = 0; k < kVec; ++k) sum += square(a.v[k]) + square(b.v[k]) + square(c.v[k]) + square(d.v[k]);
  }
  for (; i < packs; i += threads) {
    const Pack<T, kVec> a = p[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) sum += square(a.v[k]);
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

// Fixed for a device and numel: min(4 x SMs, blocks needed to give every thread a 16-byte pack
// or, for the smallest inputs, an element).
unsigned sum_squares_grid(std::int64_t n) {
  const int sms = current_device_facts().sms;
  std::int64_t blocks = (n / 4 + kBlock - 1) / kBlock;
  if (blocks < 1) blocks = 1;
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
