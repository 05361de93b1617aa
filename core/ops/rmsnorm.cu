// RMSNorm on CUDA. Forward: one warp per row, fp32 statistics, 16-byte accesses when the rows
// allow; x is read twice per row (the second read hits L1/L2), y written once. Fused variants
// take the residual add into the forward (sum = a + b, then the norm of sum) and add dx into the
// residual stream's gradient in the backward, each saving a pass over [N, C].
// Backward for 16-byte rows of up to 1024 channels: one pass that reads x and dy once, forms dx
// and keeps each lane's dweight column sums in registers; a second launch adds the blocks'
// partial sums in a fixed order (no atomics), so runs are bit-reproducible. Other rows: dx kernel,
// then a column kernel that reads x and dy again for dweight.
#include <algorithm>
#include <type_traits>

#include "core/ops/chunk_sums.cuh"
#include "core/ops/elementwise_map.cuh"

namespace sy::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // 8 warps, one row each

// v as stored in T and read back: the fused residual add keeps the rounding of a separate add.
template <class T>
__device__ __forceinline__ float round_to(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return __bfloat162float(__float2bfloat16(v));
  }
}

// y = rmsnorm(x) * w, rstd saved; with ADD, x = a + b is formed here and written to `sum` (the
// residual stream), rounded to T first so the statistics are those of the stored values,
// exactly as add then rmsnorm_forward would give. The second pass re-reads x (the sum, with ADD)
// from L1/L2; each thread reads only what it wrote, so sum may alias a or b.
template <class T, int VEC, bool ADD>
__global__ void rmsnorm_forward_kernel(const T* a, const T* b, T* sum, const T* weight, T* y, float* rstd, int rows,
                                       int channels, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const std::int64_t base = std::int64_t(row) * channels;
  const T* x = ADD ? sum : a;  // the norm's input, once formed
  float sum_sq = 0.0f;
  for (int c = lane * VEC; c < channels; c += 32 * VEC) {
    float v[VEC];
    load_vec<VEC>(a + base + c, v);
    if constexpr (ADD) {
      float vb[VEC];
      load_vec<VEC>(b + base + c, vb);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = round_to<T>(v[k] + vb[k]);
      store_vec<VEC>(sum + base + c, v);
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum_sq += v[k] * v[k];
  }
  const float r = rsqrtf(warp_sum(sum_sq) / float(channels) + eps);
  if (lane == 0) rstd[row] = r;
  for (int c = lane * VEC; c < channels; c += 32 * VEC) {
    float v[VEC], w[VEC];
    load_vec<VEC>(x + base + c, v);
    load_vec<VEC>(weight + c, w);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = v[k] * r * w[k];
    store_vec<VEC>(y + base + c, v);
  }
}

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*rstd; with ACCUMULATE, dx += that (the
// residual stream's gradient), saving a scratch buffer and an add pass. One warp per row; the
// rows rmsnorm_backward_one_pass_kernel does not take (below), whose dx is bit-identical to this.
template <class T, int VEC, bool ACCUMULATE>
__global__ void rmsnorm_backward_dx_kernel(const T* x, const T* weight, const float* rstd, const T* dy, T* dx,
                                           int rows, int channels) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const std::int64_t base = std::int64_t(row) * channels;
  const float r = rstd[row];
  float dot = 0.0f;
  for (int c = lane * VEC; c < channels; c += 32 * VEC) {
    float vx[VEC], vdy[VEC], w[VEC];
    load_vec<VEC>(x + base + c, vx);
    load_vec<VEC>(dy + base + c, vdy);
    load_vec<VEC>(weight + c, w);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dot += vdy[k] * w[k] * vx[k];
  }
  dot = warp_sum(dot) * r / float(channels);
  for (int c = lane * VEC; c < channels; c += 32 * VEC) {
    float vx[VEC], vdy[VEC], w[VEC], out[VEC];
    load_vec<VEC>(x + base + c, vx);
    load_vec<VEC>(dy + base + c, vdy);
    load_vec<VEC>(weight + c, w);
    if constexpr (ACCUMULATE) load_vec<VEC>(dx + base + c, out);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float g = r * (vdy[k] * w[k] - vx[k] * r * dot);
      out[k] = ACCUMULATE ? out[k] + g : g;
    }
    store_vec<VEC>(dx + base + c, out);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// dweight[c] (+)= sum_n dy[n,c] * x[n,c] * rstd[n], deterministic and without atomics in two
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
                                               int channels, int chunks, bool accumulate) {
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
    // One chunk: straight to dweight (channels too wide for the partials array).
    if (chunks == 1) dweight[c] = accumulate ? dweight[c] + total : total;
    else rmsnorm_dweight_partials[chunk * channels + c] = total;
  }
}

// The same partial sums for rows of 16-byte vectors: thread (lane, row lane) owns channels
// 8 (32 x + lane) .. + 7, so a warp reads 512 contiguous bytes of x and of dy per row (the
// element kernel reads 64, and ran at half the copy rate on an H200). Each channel's sum takes
// the rows in the same order as the element kernel's; the row lanes meet in shared memory in
// lane order. More, shorter chunks than kChunks keep enough loads in flight (the partials array
// holds kChunks * kMaxChunkedChannels floats, so chunks * channels must fit that).
constexpr int kVecChunkRows = 128;
constexpr int kPartialFloats = kChunks * kMaxChunkedChannels;

template <class T>
__global__ void __launch_bounds__(32 * kRowLanes)
    rmsnorm_dweight_partial_vec_kernel(const T* x, const float* rstd, const T* dy, int rows, int channels,
                                       int rows_per_chunk) {
  __shared__ float partial[kRowLanes][32 * 8];
  const int lane = threadIdx.x, row_lane = threadIdx.y, chunk = blockIdx.y;
  const int c = (blockIdx.x * 32 + lane) * 8;
  const int first = chunk * rows_per_chunk, last = min(rows, first + rows_per_chunk);
  float sum[8] = {};
  if (c < channels) {
    for (int n = first + row_lane; n < last; n += kRowLanes) {
      float vx[8], vdy[8];
      load_vec<8>(x + std::int64_t(n) * channels + c, vx);
      load_vec<8>(dy + std::int64_t(n) * channels + c, vdy);
      const float r = rstd[n];
#pragma unroll
      for (int k = 0; k < 8; ++k) sum[k] += vdy[k] * vx[k] * r;
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) partial[row_lane][lane * 8 + k] = sum[k];
  __syncthreads();
  const int t = row_lane * 32 + lane;  // this thread's column of the block's 256
  const int column = blockIdx.x * 256 + t;
  if (column < channels) {
    float total = 0.0f;
    for (int l = 0; l < kRowLanes; ++l) total += partial[l][t];
    rmsnorm_dweight_partials[std::int64_t(chunk) * channels + column] = total;
  }
}

// The partials array's device address, for add_chunk_sums (chunk_sums.cuh), which adds its rows:
// one per chunk (the column kernels) or per block (the one-pass kernel), in a fixed order.
float* dweight_partials() {
  void* address = nullptr;
  SY_CUDA(cudaGetSymbolAddress(&address, rmsnorm_dweight_partials));
  return static_cast<float*>(address);
}

// dx as rmsnorm_backward_dx_kernel computes it (the same operations in the same order: the same
// bits), and dweight's partial sums from the same registers, so x and dy are read from memory
// once. For 16-byte rows of GROUPS 256-channel groups: lane l owns channels 8 (l + 32 j) .. + 7
// of group j in every row, so it adds dy*x*rstd of its rows into GROUPS x 8 sums in registers
// (not shared memory: see launch_rmsnorm_backward); the weight stays in registers too. Each warp
// takes rows_per_warp consecutive rows; at the end the block's warps meet in shared memory in
// warp order and the block writes one partial row, rmsnorm_dweight_partials[block, channels],
// which add_chunk_sums adds in block order. A row per block, not per warp: 8x fewer
// partials to write and read back (per warp, 6.3 MB at 16384 x 768, over the array's 2 MiB).
constexpr int kOnePassWarps = 8;
// x, dy, weight and sums take 32 floats a group in registers: up to 3 groups fit in 128 registers
// (two blocks an SM); 4 groups take about 160, one block an SM (capped at 128 they spill).
constexpr int kOnePassMaxGroups = 4;
static_assert(kPartialFloats >= kOnePassMaxGroups * 256, "the partials array holds a block's row");
// 8 rows a warp at 16384 rows gives 2048 warps in 256 blocks of 8: at two blocks an SM, one wave
// that fills all 132 SMs of an H200 with 16 warps each, every warp with a row of x and dy in
// flight (3 KB at 768 bf16). Fewer rows a warp would add a second, partial wave and more partial
// rows to sum; more would leave SMs with one block.
constexpr int kOnePassRowsPerWarp = 8;

template <class T, int GROUPS, bool ACCUMULATE>
__global__ void __launch_bounds__(32 * kOnePassWarps, GROUPS <= 3 ? 2 : 1)
    rmsnorm_backward_one_pass_kernel(const T* x, const T* weight, const float* rstd, const T* dy, T* dx, int rows,
                                     int channels, int rows_per_warp) {
  static_assert(GROUPS >= 1 && GROUPS <= kOnePassMaxGroups);
  __shared__ float warp_sums[kOnePassWarps][GROUPS * 256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = (blockIdx.x * kOnePassWarps + warp) * rows_per_warp;
  const int last = min(rows, first + rows_per_warp);
  float w[GROUPS][8], sums[GROUPS][8] = {};
#pragma unroll
  for (int j = 0; j < GROUPS; ++j) {
    const int c = (lane + 32 * j) * 8;  // the last group may end past the row
    if (c < channels) load_vec<8>(weight + c, w[j]);
  }
  for (int row = first; row < last; ++row) {
    const std::int64_t base = std::int64_t(row) * channels;
    const float r = rstd[row];
    float vx[GROUPS][8], vdy[GROUPS][8];
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const int c = (lane + 32 * j) * 8;
      if (c < channels) {
        load_vec<8>(x + base + c, vx[j]);
        load_vec<8>(dy + base + c, vdy[j]);
#pragma unroll
        for (int k = 0; k < 8; ++k) dot += vdy[j][k] * w[j][k] * vx[j][k];
      }
    }
    dot = warp_sum(dot) * r / float(channels);
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const int c = (lane + 32 * j) * 8;
      if (c < channels) {
        float out[8];
        if constexpr (ACCUMULATE) load_vec<8>(dx + base + c, out);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float g = r * (vdy[j][k] * w[j][k] - vx[j][k] * r * dot);
          out[k] = ACCUMULATE ? out[k] + g : g;
          sums[j][k] += vdy[j][k] * vx[j][k] * r;
        }
        store_vec<8>(dx + base + c, out);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < GROUPS; ++j) store_vec8(&warp_sums[warp][(lane + 32 * j) * 8], sums[j]);
  __syncthreads();
  for (int c = threadIdx.x; c < channels; c += 32 * kOnePassWarps) {
    float total = 0.0f;
    for (int v = 0; v < kOnePassWarps; ++v) total += warp_sums[v][c];
    rmsnorm_dweight_partials[std::int64_t(blockIdx.x) * channels + c] = total;
  }
}

// The instantiation for rows of `groups` 256-channel groups, 1 to kOnePassMaxGroups.
template <class T, bool ACCUMULATE>
auto one_pass_kernel(int groups) {
  switch (groups) {
    case 1: return rmsnorm_backward_one_pass_kernel<T, 1, ACCUMULATE>;
    case 2: return rmsnorm_backward_one_pass_kernel<T, 2, ACCUMULATE>;
    case 3: return rmsnorm_backward_one_pass_kernel<T, 3, ACCUMULATE>;
    default: return rmsnorm_backward_one_pass_kernel<T, 4, ACCUMULATE>;
  }
}

// Launches the forward; with a and b both given, the residual add is fused in (sum = a + b).
void launch_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& sum, const Tensor& weight, const Tensor& y,
                            const Tensor& rstd, float eps, StreamRef stream) {
  const int rows = int(a.size(0)), channels = int(a.size(1));
  if (rows == 0) return;
  const bool add = b.defined();
  const bool vec = channels % 8 == 0 && aligned16(a.data()) && aligned16(weight.data()) && aligned16(y.data()) &&
                   (!add || (aligned16(b.data()) && aligned16(sum.data())));
  dispatch_float(a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* ap = static_cast<const T*>(a.data());
    const T* bp = add ? static_cast<const T*>(b.data()) : nullptr;
    T* sp = add ? static_cast<T*>(sum.data()) : nullptr;
    const T* wp = static_cast<const T*>(weight.data());
    T* yp = static_cast<T*>(y.data());
    const dim3 grid = grid_for(rows, kRowsPerBlock), block = 32 * kRowsPerBlock;
    const auto kernel = vec ? (add ? rmsnorm_forward_kernel<T, 8, true> : rmsnorm_forward_kernel<T, 8, false>)
                            : (add ? rmsnorm_forward_kernel<T, 1, true> : rmsnorm_forward_kernel<T, 1, false>);
    kernel<<<grid, block, 0, to_cuda(stream)>>>(ap, bp, sp, wp, yp, rstd.ptr<float>(), rows, channels, eps);
  });
  SY_CUDA_LAUNCH();
}

// dx (written, or accumulated into), then the deterministic dweight reduction, which writes or
// adds to dweight by `mode`. 16-byte rows of up to 1024 channels: the one-pass kernel, then the
// sum of its blocks' partial rows; x and dy are read once, 50 MB a call less than dx kernel plus
// column kernel at 16384 x 768 bf16. Its dweight sums live in registers: an earlier single pass
// that kept them in 48 KiB of shared memory a block measured slower on an H200 at 768 channels,
// 1.54 against 1.34 ms per step, with too few warps resident. Other rows: the dx kernel, then the
// column kernels reading x and dy again, then (with chunks) the sum.
void launch_rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                             const Tensor& dx, const Tensor& dweight, bool accumulate, GradMode mode,
                             StreamRef stream) {
  const int rows = int(x.size(0)), channels = int(x.size(1));
  const bool add_dweight = mode == GradMode::accumulate;
  if (rows == 0) {  // no rows, no terms: an overwritten dweight is zero
    if (!add_dweight && channels > 0)
      SY_CUDA(cudaMemsetAsync(dweight.data(), 0, std::size_t(channels) * sizeof(float), to_cuda(stream)));
    return;
  }
  const bool vec = channels % 8 == 0 && aligned16(x.data()) && aligned16(weight.data()) && aligned16(dy.data()) &&
                   aligned16(dx.data());
  const cudaStream_t s = to_cuda(stream);
  if (vec && channels <= kOnePassMaxGroups * 256) {
    // 8 rows a warp, or more when the blocks' partial rows would not fit the partials array.
    const int max_blocks = kPartialFloats / channels;
    const int rows_per_warp = std::max(kOnePassRowsPerWarp, (rows + kOnePassWarps * max_blocks - 1) /
                                                                (kOnePassWarps * max_blocks));
    const int blocks = int(grid_for(rows, kOnePassWarps * rows_per_warp));
    const int groups = (channels + 255) / 256;
    dispatch_float(x, [&](auto* type) {
      using T = std::remove_pointer_t<decltype(type)>;
      const T* xp = static_cast<const T*>(x.data());
      const T* wp = static_cast<const T*>(weight.data());
      const T* dyp = static_cast<const T*>(dy.data());
      const auto kernel = accumulate ? one_pass_kernel<T, true>(groups) : one_pass_kernel<T, false>(groups);
      kernel<<<blocks, 32 * kOnePassWarps, 0, s>>>(xp, wp, rstd.ptr<float>(), dyp, static_cast<T*>(dx.data()), rows,
                                                   channels, rows_per_warp);
    });
    SY_CUDA_LAUNCH();
    add_chunk_sums(dweight_partials(), blocks, channels, dweight.ptr<float>(), add_dweight, s);
    return;
  }
  // dweight chunks: kVecChunkRows rows each for 16-byte rows (as many as the partials array
  // holds), kChunks otherwise, one for rows too wide for the array.
  const bool vec_dweight = vec && channels <= kMaxChunkedChannels;
  int chunks = channels <= kMaxChunkedChannels ? kChunks : 1;
  if (vec_dweight) {
    chunks = std::max(1, std::min(kPartialFloats / channels, (rows + kVecChunkRows - 1) / kVecChunkRows));
  }
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = static_cast<const T*>(x.data());
    const T* wp = static_cast<const T*>(weight.data());
    const T* dyp = static_cast<const T*>(dy.data());
    T* dxp = static_cast<T*>(dx.data());
    const float* rp = rstd.ptr<float>();
    const dim3 grid = grid_for(rows, kRowsPerBlock), block = 32 * kRowsPerBlock;
    if (vec && accumulate) {
      rmsnorm_backward_dx_kernel<T, 8, true><<<grid, block, 0, s>>>(xp, wp, rp, dyp, dxp, rows, channels);
    } else if (vec) {
      rmsnorm_backward_dx_kernel<T, 8, false><<<grid, block, 0, s>>>(xp, wp, rp, dyp, dxp, rows, channels);
    } else if (accumulate) {
      rmsnorm_backward_dx_kernel<T, 1, true><<<grid, block, 0, s>>>(xp, wp, rp, dyp, dxp, rows, channels);
    } else {
      rmsnorm_backward_dx_kernel<T, 1, false><<<grid, block, 0, s>>>(xp, wp, rp, dyp, dxp, rows, channels);
    }
    SY_CUDA_LAUNCH();
    if (vec_dweight) {
      const int rows_per_chunk = (rows + chunks - 1) / chunks;
      rmsnorm_dweight_partial_vec_kernel<T><<<dim3(grid_for(channels, 256), unsigned(chunks)), dim3(32, kRowLanes),
                                              0, s>>>(xp, rp, dyp, rows, channels, rows_per_chunk);
    } else {
      rmsnorm_dweight_partial_kernel<T><<<dim3(grid_for(channels, 32), unsigned(chunks)), dim3(32, kRowLanes), 0,
                                          s>>>(xp, rp, dyp, dweight.ptr<float>(), rows, channels, chunks,
                                               add_dweight);
    }
  });
  SY_CUDA_LAUNCH();
  // The chunks' partial sums, added in chunk order (the element kernel's single chunk already
  // went straight to dweight).
  if (vec_dweight || chunks > 1) {
    add_chunk_sums(dweight_partials(), chunks, channels, dweight.ptr<float>(), add_dweight, s);
  }
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps,
                     StreamRef stream) {
  launch_rmsnorm_forward(x, Tensor(), Tensor(), weight, y, rstd, eps, stream);
}

void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& sum, const Tensor& weight, const Tensor& y,
                         const Tensor& rstd, float eps, StreamRef stream) {
  launch_rmsnorm_forward(a, b, sum, weight, y, rstd, eps, stream);
}

void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                      const Tensor& dweight, GradMode mode, StreamRef stream) {
  launch_rmsnorm_backward(x, weight, rstd, dy, dx, dweight, false, mode, stream);
}

void rmsnorm_backward_residual(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                               const Tensor& dresidual, const Tensor& dweight, GradMode mode, StreamRef stream) {
  launch_rmsnorm_backward(x, weight, rstd, dy, dresidual, dweight, true, mode, stream);
}

}  // namespace sy::cuda
