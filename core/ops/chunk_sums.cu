// add_chunk_sums: see chunk_sums.cuh. One thread per element walking every chunk took 8.4 us a
// call at 128 chunks of 768 on an H200, and 12.8 us at 256 chunks of 6144 (each thread waiting on
// L2 once per batch of loads); 8 lanes per element cut the chain to an eighth.
#include "core/ops/chunk_sums.cuh"

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kLanes = 8;  // chunk lanes per element
constexpr int kBatch = 8;  // loads in flight per lane

__global__ void __launch_bounds__(32 * kLanes)
    chunk_sums_kernel(const float* partial, int chunks, std::int64_t count, float* out, bool accumulate) {
  __shared__ float lanes[kLanes][33];
  const std::int64_t i = std::int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int lane = threadIdx.y;
  float total = 0.0f;
  if (i < count) {
    for (int first = lane; first < chunks; first += kBatch * kLanes) {
      float v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int chunk = first + b * kLanes;
        v[b] = chunk < chunks ? partial[std::int64_t(chunk) * count + i] : 0.0f;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (first + b * kLanes < chunks) total += v[b];
    }
  }
  lanes[lane][threadIdx.x] = total;
  __syncthreads();
  if (lane == 0 && i < count) {
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += lanes[l][threadIdx.x];
    out[i] = accumulate ? out[i] + sum : sum;
  }
}

}  // namespace

void add_chunk_sums(const float* partial, int chunks, std::int64_t count, float* out, bool accumulate,
                    cudaStream_t stream) {
  if (count == 0) return;
  chunk_sums_kernel<<<grid_for(count, 32), dim3(32, kLanes), 0, stream>>>(partial, chunks, count, out, accumulate);
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
