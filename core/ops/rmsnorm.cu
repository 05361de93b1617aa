// RMSNorm on CUDA. Forward and dx: one warp per row, fp32 statistics; x is read twice per row
// (the second read hits L1), y written once. dweight: a separate deterministic column
// reduction (fixed summation order, no atomics) so runs are bit-reproducible.
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // 8 warps, one row each

template <class T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* weight, T* y, float* rstd, int rows, int channels,
                                       float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + std::int64_t(row) * channels;
  float sum_sq = 0.0f;
  for (int c = lane; c < channels; c += 32) {
    const float v = load_f32(xr + c);
    sum_sq += v * v;
  }
  const float r = rsqrtf(warp_sum(sum_sq) / float(channels) + eps);
  if (lane == 0) rstd[row] = r;
  T* yr = y + std::int64_t(row) * channels;
  for (int c = lane; c < channels; c += 32) store_f32(yr + c, load_f32(xr + c) * r * load_f32(weight + c));
}

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*rstd.
template <class T>
__global__ void rmsnorm_backward_dx_kernel(const T* x, const T* weight, const float* rstd, const T* dy, T* dx,
                                           int rows, int channels) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const std::int64_t base = std::int64_t(row) * channels;
  const float r = rstd[row];
  float dot = 0.0f;
  for (int c = lane; c < channels; c += 32) dot += load_f32(dy + base + c) * load_f32(weight + c) * load_f32(x + base + c);
  dot = warp_sum(dot) * r / float(channels);
  for (int c = lane; c < channels; c += 32) {
    const float xhat = load_f32(x + base + c) * r;
    store_f32(dx + base + c, r * (load_f32(dy + base + c) * load_f32(weight + c) - xhat * dot));
  }
}

// dweight[c] += sum_n dy[n,c] * x[n,c] * rstd[n], deterministic and without atomics in two
// launches: the rows are cut into kChunks fixed chunks, each (32-column tile, chunk) block writes
// its partial sums to a static device array, and a second launch adds each column's partials in
// chunk order. The grid then fills the device (columns / 32 x kChunks blocks) where one block per
// column tile striding over every row left most SMs idle. Like sum_squares, the array is a
// per-device global: calls on streams that may overlap are not allowed.
constexpr int kRowLanes = 8;
constexpr int kChunks = 32;
constexpr int kMaxChunkedChannels = 16384;
__device__ float rmsnorm_dweight_partials[kChunks * kMaxChunkedChannels];

template <class T>
__global__ void rmsnorm_dweight_partial_kernel(const T* x, const float* rstd, const T* dy, float* dweight, int rows,
                                               int channels, int chunks) {
  __shared__ float partial[kRowLanes][33];
  const int c = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
  const int rows_per_chunk = (rows + chunks - 1) / chunks;
  const int first = chunk * rows_per_chunk, last = min(rows, first + rows_per_chunk);
  float sum = 0.0f;
  if (c < channels) {
    for (int n = first + int(threadIdx.y); n < last; n += kRowLanes) {
      const std::int64_t i = std::int64_t(n) * channels + c;
      sum += load_f32(dy + i) * load_f32(x + i) * rstd[n];
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    // One chunk: add straight to dweight (channels too wide for the partials array).
    if (chunks == 1) dweight[c] += total;
    else rmsnorm_dweight_partials[chunk * channels + c] = total;
  }
}

__global__ void rmsnorm_dweight_sum_kernel(float* dweight, int channels) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  float total = 0.0f;
  for (int chunk = 0; chunk < kChunks; ++chunk) total += rmsnorm_dweight_partials[chunk * channels + c];
  dweight[c] += total;
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps,
                     StreamRef stream) {
  const int rows = int(x.size(0)), channels = int(x.size(1));
  if (rows == 0) return;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    rmsnorm_forward_kernel<T><<<grid_for(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, to_cuda(stream)>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(weight.data()), static_cast<T*>(y.data()),
        rstd.ptr<float>(), rows, channels, eps);
  });
  SY_CUDA_LAUNCH();
}

void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                      const Tensor& dweight, StreamRef stream) {
  const int rows = int(x.size(0)), channels = int(x.size(1));
  if (rows == 0) return;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = static_cast<const T*>(x.data());
    const T* dyp = static_cast<const T*>(dy.data());
    rmsnorm_backward_dx_kernel<T><<<grid_for(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, to_cuda(stream)>>>(
        xp, static_cast<const T*>(weight.data()), rstd.ptr<float>(), dyp, static_cast<T*>(dx.data()), rows,
        channels);
    SY_CUDA_LAUNCH();
    const int chunks = channels <= kMaxChunkedChannels ? kChunks : 1;
    rmsnorm_dweight_partial_kernel<T><<<dim3(grid_for(channels, 32), unsigned(chunks)), dim3(32, kRowLanes), 0,
                                        to_cuda(stream)>>>(xp, rstd.ptr<float>(), dyp, dweight.ptr<float>(), rows,
                                                           channels, chunks);
    SY_CUDA_LAUNCH();
    if (chunks > 1) {
      rmsnorm_dweight_sum_kernel<<<grid_for(channels, 256), 256, 0, to_cuda(stream)>>>(dweight.ptr<float>(),
                                                                                       channels);
    }
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
