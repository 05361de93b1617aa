// Reductions on CUDA. sum_squares is deterministic without a scratch argument: one launch over
// a grid whose size depends only on the parts' sizes and the device, a partial per block in a static
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

// The parts of one launch, in the kernel's parameter space (__grid_constant__: indexed without a
// per-thread copy). Part p takes blocks [first_block[p], first_block[p + 1]).
constexpr int kMaxParts = 64;  // a power of two, for the binary search
static_assert((kMaxParts & (kMaxParts - 1)) == 0);
struct PartTable {
  const void* data[kMaxParts];
  std::int64_t numel[kMaxParts];
  unsigned first_block[kMaxParts + 1];
  int count;
};

// out[0] += the sum of x^2 over every part. Each block sums its part's share: the elements before
// the part's first 16-byte boundary and after its last whole pack go to the part's first threads;
// the packs in between are grid-strided (over the part's blocks) 16-byte loads, four in flight per
// thread (one 4-byte load at a time reached about 2.4 TB/s). The block sums its threads (fixed
// shuffle tree) into partials[block]; the block that arrives last reads all partials in index
// order, adds the total to out[0] and resets the counter. Every input element is read once;
// every step has a fixed order for a given part list and grid, so the same input gives the same
// bits on every run. The __threadfence makes a block's partial visible device-wide before its
// arrival is counted, and the last block reads partials with __ldcg (L2), never a stale L1 line.
template <class T>
__global__ void __launch_bounds__(kBlock) sum_squares_kernel(const __grid_constant__ PartTable table, float* out) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float scratch[32];
  __shared__ bool is_last;
  int part = 0;  // the last part whose first block is at or before this one
  for (int step = kMaxParts / 2; step > 0; step /= 2)
    if (part + step < table.count && table.first_block[part + step] <= blockIdx.x) part += step;
  const T* x = static_cast<const T*>(table.data[part]);
  const std::int64_t n = table.numel[part];
  const std::int64_t thread = std::int64_t(blockIdx.x - table.first_block[part]) * blockDim.x + threadIdx.x;
  const std::int64_t threads = std::int64_t(table.first_block[part + 1] - table.first_block[part]) * blockDim.x;
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

// Blocks for a part of n elements: its share of a grid of 4 x SMs blocks (at least one), but no
// more than give every thread a 16-byte pack (an element, for the smallest parts). Fixed for a
// device and part list. The share keeps every block's work about equal across parts.
unsigned part_blocks(std::int64_t n, std::int64_t total) {
  const std::int64_t grid = std::min<std::int64_t>(std::int64_t(kBlocksPerSm) * current_device_facts().sms,
                                                   kMaxBlocks - kMaxParts);
  const std::int64_t share = (grid * n + total - 1) / total;
  const std::int64_t needed = std::max<std::int64_t>(1, (n / 4 + kBlock - 1) / kBlock);
  return unsigned(std::max<std::int64_t>(1, std::min(share, needed)));
}

}  // namespace

void sum_squares(const Tensor* parts, std::size_t count, const Tensor& out, StreamRef stream) {
  std::size_t next = 0;
  while (next < count) {  // up to kMaxParts non-empty parts per launch
    PartTable table{};
    std::int64_t total = 0;
    std::size_t end = next;
    for (int taken = 0; end < count && taken < kMaxParts; ++end) {
      if (parts[end].numel() == 0) continue;
      total += parts[end].numel();
      ++taken;
    }
    unsigned blocks = 0;
    for (; next < end; ++next) {
      const Tensor& part = parts[next];
      if (part.numel() == 0) continue;
      table.data[table.count] = part.data();
      table.numel[table.count] = part.numel();
      table.first_block[table.count] = blocks;
      blocks += part_blocks(part.numel(), total);
      ++table.count;
    }
    if (table.count == 0) break;
    table.first_block[table.count] = blocks;
    dispatch_float(parts[0], [&](auto* type) {
      using T = std::remove_pointer_t<decltype(type)>;
      sum_squares_kernel<T><<<blocks, kBlock, 0, to_cuda(stream)>>>(table, out.ptr<float>());
    });
    SY_CUDA_LAUNCH();
  }
}

}  // namespace sy::cuda
