// Router on CUDA, forward then backward. The router's three products with x (logits = x·Wr,
// dWr += x^T·dlogits, dx += dlogits·Wr^T, and the same with Wn for Gaussian noise) are fused
// kernels that stream x (or dx) once and redraw each element's jitter factor from its Philox
// counter, so no [N, d] router input is saved; with small E they are bound by that stream, or
// with jitter by the draws. The other kernels do softmax, top-k, slots, statistics and
// d loss / d logits. Nothing waits on the host and nothing sums floats with atomics, so a run
// is bit-reproducible.
#include <algorithm>
#include <climits>

#include <cub/device/device_radix_sort.cuh>

#include "core/ops/chunk_sums.cuh"
#include "core/ops/cuda_common.cuh"
#include "core/ops/elementwise_map.cuh"
#include "moe/router_kernels.h"

namespace sy::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;  // per-token kernels: one warp per token; x·W kernels: 8 channel slices
constexpr int kThreads = 256;
constexpr int kMaxGrid = 4096;  // grid-stride kernels: enough blocks to fill an H200 several times
static_assert(kWarpsPerBlock * 32 == kThreads);

// The fused x·W kernels hold a [channels, experts] chunk of Wr (and Wn) in shared memory, at
// most this many bytes of it; with more, the channels are taken chunk by chunk.
constexpr int kWeightSmemBytes = 64 << 10;
// The logits and weight-gradient kernels keep sums for up to kWideExperts experts per thread in
// registers (kNarrowExperts when E is that small, to spare registers); more experts take
// further passes over x.
constexpr int kNarrowExperts = 8;
constexpr int kWideExperts = 32;
// The input-gradient kernel stages up to this many experts of dlogits per token in shared memory.
constexpr int kGradExperts = 256;
// Weight gradients: rows are cut into at most kMaxRowChunks chunks of at least kMinChunkRows,
// and the [chunks, d, E] partial sums kept under kPartialBytes.
constexpr int kMaxRowChunks = 64;
constexpr std::int64_t kMinChunkRows = 128;
constexpr std::int64_t kPartialBytes = 16 << 20;
constexpr int kRowLanes = 8;  // weight-gradient block: 32 channel lanes x 8 row lanes
static_assert(kRowLanes * 32 == kThreads);

unsigned stride_grid(std::int64_t n) { return unsigned(std::min<std::int64_t>(grid_for(n, kThreads), kMaxGrid)); }

__device__ __forceinline__ float softplus_f32(float h) { return h > 20.0f ? h : log1pf(expf(h)); }
__device__ __forceinline__ float sigmoid_f32(float h) { return 1.0f / (1.0f + expf(-h)); }

// ---- the router input x * jitter factor, as the fused kernels see it --------------------------

// The shape of x and its jitter. The jitter counter of element (n, c) is (first_token + n) * d + c,
// the global element index, as in router_jitter_factor's contract.
struct RouterInput {
  std::int64_t rows = 0;  // N
  int d = 0;
  std::uint64_t first_token = 0;
  RngKey key;
  float eps = 0;
  bool jitter = false;
};

// The jitter factors of elements (n, c) .. (n, c + kVec - 1); 1 without jitter.
template <int kVec>
__device__ __forceinline__ void jitter_factors(const RouterInput& in, std::int64_t n, int c, float (&f)[kVec]) {
  const std::uint64_t index = (in.first_token + std::uint64_t(n)) * std::uint64_t(in.d) + std::uint64_t(c);
#pragma unroll
  for (int j = 0; j < kVec; ++j) f[j] = in.jitter ? router_jitter_factor(in.key, index + j, in.eps) : 1.0f;
}

// acc[e] += input * w_row[e] for the kTile experts of one weight row in shared memory (16-byte
// reads; kTile is a multiple of 4).
template <int kTile>
__device__ __forceinline__ void accumulate_row(float (&acc)[kTile], float input, const float* w_row) {
  const float4* w4 = reinterpret_cast<const float4*>(w_row);
#pragma unroll
  for (int q = 0; q < kTile / 4; ++q) {
    const float4 w = w4[q];
    acc[4 * q] = fmaf(input, w.x, acc[4 * q]);
    acc[4 * q + 1] = fmaf(input, w.y, acc[4 * q + 1]);
    acc[4 * q + 2] = fmaf(input, w.z, acc[4 * q + 2]);
    acc[4 * q + 3] = fmaf(input, w.w, acc[4 * q + 3]);
  }
}

// tile[c, e] = w[c0 + c, e0 + e] for c < channels, e < width; 0 for e in [width, stride) and
// for experts past E. w: [d, E] f32; tile: [channels, stride] in shared memory. A block-wide
// copy: the caller synchronises around it.
__device__ void load_weight_tile(const float* w, float* tile, int c0, int channels, int e0, int width, int stride,
                                 int experts) {
  for (int i = threadIdx.x; i < channels * stride; i += blockDim.x) {
    const int c = i / stride, e = i % stride;
    tile[i] = e < width && e0 + e < experts ? w[std::int64_t(c0 + c) * experts + e0 + e] : 0.0f;
  }
}

// ---- forward --------------------------------------------------------------------------------

// out[n, e0 + e] = the sum over the block's warps, in warp order, of each warp's acc[e], for the
// lane's token n. Partial sums pass through `partial` ([warps][32][kTile + 1]; the odd row
// stride puts the 32 lanes' rows in distinct banks).
template <int kTile>
__device__ void store_warp_sums(const float (&acc)[kTile], float* partial, float* out, std::int64_t n, bool active,
                                int experts, int e0) {
  constexpr int kStride = kTile + 1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // the previous call's readers are done with `partial`
  float* mine = partial + (warp * 32 + lane) * kStride;
#pragma unroll
  for (int e = 0; e < kTile; ++e) mine[e] = acc[e];
  __syncthreads();
  if (!active) return;
  for (int e = warp; e < kTile && e0 + e < experts; e += kWarpsPerBlock) {
    float sum = 0.0f;
    for (int s = 0; s < kWarpsPerBlock; ++s) sum += partial[(s * 32 + lane) * kStride + e];
    out[n * experts + e0 + e] = sum;
  }
}

// logits[n, e] = sum_c x[n, c] * jitter(n, c) * Wr[c, e], and noise_logits with Wn (Gaussian
// noise; w_noise null otherwise), accumulated in fp32 in a fixed order.
// A block takes 32 tokens at a time, one per lane, and its 8 warps split the channels (warp s
// takes the kVec-wide vectors s, s + 8, ...). All lanes of a warp then read the same weight row
// at the same time, a shared-memory broadcast with no bank conflicts, and every weight read
// feeds 32 tokens. Each lane keeps kTile expert sums in registers; the warps' sums are added in
// warp order at the end (store_warp_sums), so the result does not depend on the grid. The
// weights sit in shared memory as [channels, kTile] chunks: when all of d and E fit in one, the
// block loads them once and strides over token tiles; otherwise every tile reloads its chunks
// (from L2). E > kTile takes one pass over x per kTile experts.
// Traffic per pass: x read once (16-byte loads on the vector path, kVec = 8; kVec = 1 when d is
// not a multiple of 8), logits written once. With jitter, the Philox draw per element of x
// costs more than the load.
template <class T, int kVec, int kTile>
__global__ void __launch_bounds__(kThreads)
    router_logits_kernel(const T* x, const float* w_router, const float* w_noise, float* logits, float* noise_logits,
                         RouterInput in, int experts, int chunk_channels) {
  static_assert(kTile % 4 == 0, "weight rows are read as float4");
  extern __shared__ float4 smem4[];
  const bool gaussian = w_noise != nullptr;
  float* w_s = reinterpret_cast<float*>(smem4);                      // [chunk_channels, kTile]
  float* wn_s = w_s + chunk_channels * kTile;                        // [chunk_channels, kTile], Gaussian only
  float* partial = wn_s + (gaussian ? chunk_channels * kTile : 0);  // [warps][32][kTile + 1]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int d = in.d;
  const int expert_tiles = (experts + kTile - 1) / kTile;
  const bool resident = expert_tiles == 1 && d <= chunk_channels;
  if (resident) {
    load_weight_tile(w_router, w_s, 0, d, 0, kTile, kTile, experts);
    if (gaussian) load_weight_tile(w_noise, wn_s, 0, d, 0, kTile, kTile, experts);
    __syncthreads();
  }
  const std::int64_t tiles = (in.rows + 31) / 32;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t n = tile * 32 + lane;
    const bool active = n < in.rows;
    for (int e0 = 0; e0 < experts; e0 += kTile) {
      float acc[kTile], noise_acc[kTile];
#pragma unroll
      for (int e = 0; e < kTile; ++e) acc[e] = noise_acc[e] = 0.0f;
      for (int c0 = 0; c0 < d; c0 += chunk_channels) {
        const int channels = min(chunk_channels, d - c0);
        if (!resident) {
          __syncthreads();  // every warp is done with the previous chunk
          load_weight_tile(w_router, w_s, c0, channels, e0, kTile, kTile, experts);
          if (gaussian) load_weight_tile(w_noise, wn_s, c0, channels, e0, kTile, kTile, experts);
          __syncthreads();
        }
        if (!active) continue;
        const T* row = x + n * d + c0;
        for (int c = warp * kVec; c < channels; c += kWarpsPerBlock * kVec) {
          float v[kVec], f[kVec];
          load_vec<kVec>(row + c, v);
          jitter_factors<kVec>(in, n, c0 + c, f);
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const float input = v[j] * f[j];
            accumulate_row<kTile>(acc, input, w_s + (c + j) * kTile);
            if (gaussian) accumulate_row<kTile>(noise_acc, input, wn_s + (c + j) * kTile);
          }
        }
      }
      store_warp_sums<kTile>(acc, partial, logits, n, active, experts, e0);
      if (gaussian) store_warp_sums<kTile>(noise_acc, partial, noise_logits, n, active, experts, e0);
    }
  }
}

// Per token: Gaussian noise (optional), softmax, logsumexp and top-k with gates. One warp per
// token: a row of E <= 4096 logits is read a few times from L1 by the lanes that own its
// columns (lane, lane + 32, ...), so no shared memory and no block barriers are needed, and a
// token's k arg-max passes are warp shuffles. Traffic: the [N, E] logits read once from DRAM,
// probs written once, (with noise) noise_logits read and noise written.
// Top-k pass j takes the largest logit strictly after pass j-1's in the order (logit
// descending, index ascending), so ties go to the lower expert and no per-lane mask is kept.
__global__ void softmax_topk_kernel(float* logits, const float* noise_logits, float* noise, float* probs, float* lse,
                                    int* expert, float* gate, int rows, int experts, int top_k, bool renormalize,
                                    RngKey key, std::uint64_t first_token) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // uniform per warp: the shuffles below see full warps
  const std::int64_t base = std::int64_t(row) * experts;
  float* l = logits + base;
  if (noise_logits != nullptr) {
    for (int e = lane; e < experts; e += 32) {
      const float z = router_noise_draw(key, (first_token + std::uint64_t(row)) * std::uint64_t(experts) + std::uint64_t(e));
      noise[base + e] = z;
      l[e] += z * softplus_f32(noise_logits[base + e]);
    }
  }
  float m = -INFINITY;
  for (int e = lane; e < experts; e += 32) m = fmaxf(m, l[e]);
  m = warp_max(m);
  float total = 0.0f;
  for (int e = lane; e < experts; e += 32) total += expf(l[e] - m);
  const float row_lse = m + logf(warp_sum(total));
  for (int e = lane; e < experts; e += 32) probs[base + e] = expf(l[e] - row_lse);
  if (lane == 0) lse[row] = row_lse;

  float prev_value = INFINITY;
  int prev_expert = -1;
  float gate_sum = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    float best_value = -INFINITY;
    int best_expert = INT_MAX;
    for (int e = lane; e < experts; e += 32) {
      const float v = l[e];
      const bool after_prev = v < prev_value || (v == prev_value && e > prev_expert);
      if (after_prev && (v > best_value || (v == best_value && e < best_expert))) {
        best_value = v;
        best_expert = e;
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other_value = __shfl_xor_sync(0xffffffffu, best_value, offset);
      const int other_expert = __shfl_xor_sync(0xffffffffu, best_expert, offset);
      if (other_value > best_value || (other_value == best_value && other_expert < best_expert)) {
        best_value = other_value;
        best_expert = other_expert;
      }
    }
    prev_value = best_value;
    prev_expert = best_expert;
    const float g = expf(best_value - row_lse);  // bit-equal to probs[base + best_expert]
    gate_sum += g;
    if (lane == 0) {
      expert[std::int64_t(row) * top_k + j] = best_expert;
      gate[std::int64_t(row) * top_k + j] = g;
    }
  }
  if (renormalize && lane == 0) {
    for (int j = 0; j < top_k; ++j) gate[std::int64_t(row) * top_k + j] /= gate_sum;
  }
}

// Sort keys for the queue order of every choice q = n * k + j. Position policy: key = expert,
// items laid out j-major (all first choices, then all second ...), so a stable sort leaves
// (j, n) order inside each expert. Probability policy: key = expert << 32 | ~gate bits (gates
// are >= 0, so their bits order like their values and the complement sorts them descending),
// items n-major, so equal gates keep token order. One read of expert/gate, one write of keys.
__global__ void queue_keys_kernel(const int* expert, const float* gate, std::uint64_t* keys, int* items, int rows,
                                  int top_k, bool by_probability) {
  const std::int64_t choices = std::int64_t(rows) * top_k;
  for (std::int64_t q = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < choices;
       q += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t p = q;
    std::uint64_t key = std::uint64_t(expert[q]);
    if (by_probability) {
      key = (key << 32) | std::uint64_t(~__float_as_uint(gate[q]));
    } else {
      p = (q % top_k) * rows + q / top_k;
    }
    keys[p] = key;
    items[p] = int(q);
  }
}

// offsets[e] = first position of expert e in the sorted keys (offsets[E] = choices), by
// binary search: E + 1 threads, log2(choices) reads each, no histogram pass needed.
__global__ void queue_offsets_kernel(const std::uint64_t* sorted_keys, int choices, int shift, int experts,
                                     int* offsets) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e > experts) return;
  const std::uint64_t target = std::uint64_t(e) << shift;
  int lo = 0, hi = choices;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (sorted_keys[mid] < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  offsets[e] = lo;
}

// A choice's slot is its rank in its expert's sorted run; ranks >= capacity are dropped
// (slot -1, gate 0). Reads the sorted keys and items once, scatters slot (and gate) writes.
__global__ void assign_slots_kernel(const std::uint64_t* sorted_keys, const int* sorted_items, const int* offsets,
                                    int choices, int shift, std::int64_t capacity, int* slot, float* gate) {
  for (std::int64_t p = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < choices;
       p += std::int64_t(gridDim.x) * blockDim.x) {
    const int e = int(sorted_keys[p] >> shift);
    const std::int64_t rank = p - offsets[e];
    const bool kept = capacity == 0 || rank < capacity;
    const int q = sorted_items[p];
    slot[q] = kept ? int(rank) : -1;
    if (!kept) gate[q] = 0.0f;
  }
}

// The position policy without a sort (queue_counts_kernel, then queue_ranks_kernel): the queue is
// the choices j-major (position p = j * rows + n for choice q = n * k + j), and a choice's slot is
// its rank among the earlier positions of its expert, which is exactly what the stable sort by
// expert gives. Blocks take kQueueBlock consecutive positions. The first kernel counts each
// block's choices per expert; the second starts each expert's ranks at the counts of the blocks
// before, ranks its warp's lanes with __match_any_sync, adds the counts of the warps before, and
// block 0 writes the experts' offsets. Integer counts: the same slots as the sort, every run.
// Six launches (keys, three radix-sort passes, offsets, slots) become two.
constexpr int kQueueBlock = 1024;
constexpr int kQueueWarps = kQueueBlock / 32;
constexpr int kQueueMaxExperts = 256;  // shared memory: (kQueueWarps + 2) x experts ints

__device__ __forceinline__ std::int64_t queue_choice(std::int64_t p, int rows, int top_k) {
  return (p % rows) * top_k + p / rows;
}

__global__ void __launch_bounds__(kQueueBlock)
    queue_counts_kernel(const int* expert, int rows, int top_k, int experts, int* block_counts) {
  extern __shared__ int counts[];  // [experts]
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const std::int64_t p = std::int64_t(blockIdx.x) * kQueueBlock + threadIdx.x;
  if (p < std::int64_t(rows) * top_k) atomicAdd(&counts[expert[queue_choice(p, rows, top_k)]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) block_counts[std::int64_t(blockIdx.x) * experts + e] = counts[e];
}

__global__ void __launch_bounds__(kQueueBlock)
    queue_ranks_kernel(const int* expert, int rows, int top_k, int experts, const int* block_counts, int blocks,
                       std::int64_t capacity, int* slot, float* gate, int* offsets) {
  extern __shared__ int shared[];
  int* before = shared;                         // [experts]: this block's first rank per expert
  int* totals = shared + experts;               // [experts]: all blocks' counts (block 0)
  int* warp_counts = shared + 2 * experts;      // [kQueueWarps][experts], then the warps' first ranks
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int sum = 0, total = 0;
    for (int b = 0; b < blocks; ++b) {
      const int c = block_counts[std::int64_t(b) * experts + e];
      if (b < int(blockIdx.x)) sum += c;
      total += c;
    }
    before[e] = sum;
    totals[e] = total;
  }
  for (int i = threadIdx.x; i < kQueueWarps * experts; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    int offset = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = offset;
      offset += totals[e];
    }
    offsets[experts] = offset;
  }
  const std::int64_t p = std::int64_t(blockIdx.x) * kQueueBlock + threadIdx.x;
  const bool valid = p < std::int64_t(rows) * top_k;
  const std::int64_t q = valid ? queue_choice(p, rows, top_k) : 0;
  const int e = valid ? expert[q] : -1;
  const unsigned same = __match_any_sync(0xffffffffu, e);
  const int lane_rank = __popc(same & ((1u << lane) - 1u));
  if (valid && lane_rank == 0) warp_counts[warp * experts + e] = __popc(same);
  __syncthreads();
  for (int x = threadIdx.x; x < experts; x += blockDim.x) {  // each expert's count of the warps before
    int sum = before[x];
    for (int w = 0; w < kQueueWarps; ++w) {
      const int c = warp_counts[w * experts + x];
      warp_counts[w * experts + x] = sum;
      sum += c;
    }
  }
  __syncthreads();
  if (!valid) return;
  const int rank = warp_counts[warp * experts + e] + lane_rank;
  const bool kept = capacity == 0 || rank < capacity;
  slot[q] = kept ? rank : -1;
  if (!kept) gate[q] = 0.0f;
}

// partial[b, c] = sum over rows [b * rows_per_block, ...) of v[n, c] (or v^2), in double.
// Block = 32 columns x kSumRowLanes row lanes so a warp reads 32 adjacent columns; the lanes
// are combined in a fixed order and blocks write separate partials, so the sums are
// deterministic. The [N, C] input is read once.
constexpr int kSumRowLanes = 8;
__global__ void column_sums_kernel(const float* v, std::int64_t rows, int cols, std::int64_t rows_per_block,
                                   bool square, double* partial) {
  __shared__ double lanes[kSumRowLanes][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const std::int64_t begin = std::int64_t(blockIdx.y) * rows_per_block;
  const std::int64_t end = min(rows, begin + rows_per_block);
  double sum = 0.0;
  if (c < cols) {
    for (std::int64_t n = begin + threadIdx.y; n < end; n += kSumRowLanes) {
      const double x = v[n * cols + c];
      sum += square ? x * x : x;
    }
  }
  lanes[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0.0;
    for (int lane = 0; lane < kSumRowLanes; ++lane) total += lanes[lane][threadIdx.x];
    partial[std::int64_t(blockIdx.y) * cols + c] = total;
  }
}

// One block: the local statistics buffer (layout in router_kernels.h) and the kept counts
// per expert. O(E * row_blocks) reads; tiny next to the token kernels.
__global__ void router_stats_kernel(const int* offsets, const double* prob_partials, const double* lse_partials,
                                    int row_blocks, int experts, int rows, std::int64_t capacity, int* expert_counts,
                                    double* stats) {
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const int count = offsets[e + 1] - offsets[e];
    double prob_sum = 0.0;
    for (int b = 0; b < row_blocks; ++b) prob_sum += prob_partials[std::int64_t(b) * experts + e];
    stats[e] = count;
    stats[experts + e] = prob_sum;
    expert_counts[e] = capacity == 0 ? count : int(min(std::int64_t(count), capacity));
  }
  if (threadIdx.x == 0) {
    double dropped = 0.0, lse_sq = 0.0;
    for (int e = 0; e < experts; ++e) {
      const std::int64_t count = offsets[e + 1] - offsets[e];
      if (capacity > 0 && count > capacity) dropped += double(count - capacity);
    }
    for (int b = 0; b < row_blocks; ++b) lse_sq += lse_partials[b];
    stats[2 * experts] = rows;
    stats[2 * experts + 1] = dropped;
    stats[2 * experts + 2] = lse_sq;
  }
}

// One block: aux and z losses, their gradients and the logged statistics from the local and
// the dp-summed buffers (the same formulas as router_losses_cpu in router.cpp). The aux sum runs on one
// thread in expert order so its rounding never depends on the launch shape.
__global__ void router_losses_kernel(const double* local, const double* global, bool global_scope, int experts,
                                     int top_k, float aux_coef, float z_coef, float* aux_loss, float* z_loss,
                                     float* aux_grad, float* z_grad, std::int64_t* tokens_per_expert,
                                     float* dropped_fraction) {
  const double* scope = global_scope ? global : local;
  const double tokens = scope[2 * experts];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const double f = tokens > 0 ? scope[e] / (tokens * top_k) : 0.0;
    aux_grad[e] = tokens > 0 ? float(double(aux_coef) * experts * f / tokens) : 0.0f;
    tokens_per_expert[e] = std::int64_t(global[e]);
  }
  if (threadIdx.x == 0) {
    double aux = 0.0;
    for (int e = 0; e < experts; ++e) {
      if (tokens > 0) aux += (scope[e] / (tokens * top_k)) * (scope[experts + e] / tokens);
    }
    aux_loss[0] = float(double(aux_coef) * experts * aux);
    z_loss[0] = tokens > 0 ? float(double(z_coef) * scope[2 * experts + 2] / tokens) : 0.0f;
    z_grad[0] = tokens > 0 ? float(2.0 * double(z_coef) / tokens) : 0.0f;
    const double choices = global[2 * experts] * top_k;
    dropped_fraction[0] = choices > 0 ? float(global[2 * experts + 1] / choices) : 0.0f;
  }
}

// ---- backward -------------------------------------------------------------------------------

// d loss / d logits per token, one warp per token (as the forward token kernel):
//   dprobs[e] = aux_grad[e] + sum over kept choices j with expert e of d gate_j / d probs[e],
//   dlogits = probs * (dprobs - probs . dprobs) + z_grad * lse * probs,
// and for Gaussian noise dnoise = dlogits * z * sigmoid(x·Wn) (d softplus = sigmoid). The k
// choices are re-read by every lane from L1 instead of being staged, since k is small. Reads
// probs once (twice from L1), writes dlogits (and dnoise) once.
__global__ void logits_grad_kernel(const float* probs, const float* lse, const int* expert, const int* slot,
                                   const float* dgate, const float* aux_grad, const float* z_grad, const float* noise,
                                   const float* noise_logits, float* dlogits, float* dnoise, int rows, int experts,
                                   int top_k, bool renormalize) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const std::int64_t base = std::int64_t(row) * experts;
  const float* p = probs + base;
  const int* ex = expert + std::int64_t(row) * top_k;
  const int* sl = slot + std::int64_t(row) * top_k;
  const float* dg = dgate + std::int64_t(row) * top_k;
  // gate_j = g_j / S, S = sum_m g_m; a dropped choice's gate is the constant 0 but its g is in S.
  float gate_sum = 0.0f, weighted = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    const float g = p[ex[j]];
    gate_sum += g;
    if (sl[j] >= 0) weighted += dg[j] * g;
  }
  auto dprob = [&](int e) {
    float v = aux_grad[e];
    for (int j = 0; j < top_k; ++j) {
      if (ex[j] != e) continue;
      const float kept_dgate = sl[j] >= 0 ? dg[j] : 0.0f;
      v += renormalize ? kept_dgate / gate_sum - weighted / (gate_sum * gate_sum) : kept_dgate;
    }
    return v;
  };
  float dot = 0.0f;
  for (int e = lane; e < experts; e += 32) dot += p[e] * dprob(e);
  dot = warp_sum(dot);
  const float z_term = z_grad[0] * lse[row];
  for (int e = lane; e < experts; e += 32) {
    const float dl = p[e] * (dprob(e) - dot) + z_term * p[e];
    dlogits[base + e] = dl;
    if (dnoise != nullptr) dnoise[base + e] = dl * noise[base + e] * sigmoid_f32(noise_logits[base + e]);
  }
}


// out[c, e0 + e] = the sum over the block's row lanes, in order, of their sums[j][e] for channel
// c = (block's first channel) + (channel lane) * kCh + j. Partial sums pass through `lanes`
// ([row lanes][32][kCh * kTile + 1]; the odd row stride puts the channel lanes in distinct banks).
template <int kCh, int kTile>
__device__ void store_row_lane_sums(const float (&sums)[kCh][kTile], float* lanes, float* out, int d, int experts,
                                    int e0) {
  constexpr int kPerThread = kCh * kTile, kStride = kPerThread + 1;
  __syncthreads();  // the previous call's readers are done with `lanes`
  float* mine = lanes + (threadIdx.y * 32 + threadIdx.x) * kStride;
#pragma unroll
  for (int j = 0; j < kCh; ++j) {
#pragma unroll
    for (int e = 0; e < kTile; ++e) mine[j * kTile + e] = sums[j][e];
  }
  __syncthreads();
  const int c_block = blockIdx.x * 32 * kCh;
  for (int i = threadIdx.y * 32 + threadIdx.x; i < 32 * kPerThread; i += kThreads) {
    const int owner = i / kPerThread, k = i % kPerThread;
    const int c = c_block + owner * kCh + k / kTile, e = e0 + k % kTile;
    if (c >= d || e >= experts) continue;
    float sum = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) sum += lanes[(lane * 32 + owner) * kStride + k];
    out[std::int64_t(c) * experts + e] = sum;
  }
}

// Partial weight gradients over chunk blockIdx.y of the token rows:
//   partial[chunk, c, e] = sum over the chunk's rows n of x[n, c] * jitter(n, c) * dlogits[n, e],
// and partial_noise the same with dnoise (Gaussian noise; dnoise null otherwise), for the kTile
// experts from blockIdx.z * kTile. A block is 32 channel lanes x 8 row lanes: a warp reads kCh
// adjacent channels per lane of one row (coalesced) and that row's dlogits at one address (a
// broadcast), and each thread keeps kCh x kTile sums in registers over its rows. The 8 row
// lanes are then added in order through shared memory, and add_chunk_sums adds the
// chunks in order, so the result is bit-reproducible without atomics (as rmsnorm's dweight).
// Traffic per expert tile: x read once, dlogits read once per 32 * kCh channels (from L2),
// partials written once; with jitter, one Philox draw per element of x.
// acc[j][e] += (v[j] * f[j]) * grad[e0 + e]: one token's outer product of its router input
// (channels j) and a gradient row (experts e0 .., zero past E).
template <int kCh, int kTile>
__device__ __forceinline__ void accumulate_outer(float (&acc)[kCh][kTile], const float (&v)[kCh],
                                                 const float (&f)[kCh], const float* grad, int e0, int experts) {
  float g[kTile];
#pragma unroll
  for (int e = 0; e < kTile; ++e) g[e] = e0 + e < experts ? grad[e0 + e] : 0.0f;
#pragma unroll
  for (int j = 0; j < kCh; ++j) {
    const float input = v[j] * f[j];
#pragma unroll
    for (int e = 0; e < kTile; ++e) acc[j][e] = fmaf(input, g[e], acc[j][e]);
  }
}

template <class T, int kCh, int kTile>
__global__ void __launch_bounds__(kThreads)
    router_weight_grad_kernel(const T* x, const float* dlogits, const float* dnoise, float* partial,
                              float* partial_noise, RouterInput in, int experts, std::int64_t rows_per_chunk) {
  __shared__ float lanes[kRowLanes * 32 * (kCh * kTile + 1)];
  const bool gaussian = dnoise != nullptr;
  const int d = in.d;
  const int c = (blockIdx.x * 32 + threadIdx.x) * kCh;
  const int e0 = blockIdx.z * kTile;
  const std::int64_t begin = std::int64_t(blockIdx.y) * rows_per_chunk;
  const std::int64_t end = min(in.rows, begin + rows_per_chunk);
  float acc[kCh][kTile], noise_acc[kCh][kTile];
#pragma unroll
  for (int j = 0; j < kCh; ++j) {
#pragma unroll
    for (int e = 0; e < kTile; ++e) acc[j][e] = noise_acc[j][e] = 0.0f;
  }
  if (c < d) {
    for (std::int64_t n = begin + threadIdx.y; n < end; n += kRowLanes) {
      float v[kCh], f[kCh];
      load_vec<kCh>(x + n * d + c, v);
      jitter_factors<kCh>(in, n, c, f);
      accumulate_outer<kCh, kTile>(acc, v, f, dlogits + n * experts, e0, experts);
      if (gaussian) accumulate_outer<kCh, kTile>(noise_acc, v, f, dnoise + n * experts, e0, experts);
    }
  }

  const std::int64_t chunk_offset = std::int64_t(blockIdx.y) * d * experts;
  store_row_lane_sums<kCh, kTile>(acc, lanes, partial + chunk_offset, d, experts, e0);
  if (gaussian) store_row_lane_sums<kCh, kTile>(noise_acc, lanes, partial_noise + chunk_offset, d, experts, e0);
}

// Tokens a warp takes at a time in the warp-per-token kernels: in the logits, one (token, expert)
// sum per lane at the end; in the input gradient, as many as the registers allow at two blocks
// per SM.
constexpr int logits_warp_tokens(int warp_experts) { return 32 / warp_experts; }
constexpr int kInputGradWarpTokens = 2;

// The warp-per-token kernels keep Wr (and Wn) transposed in shared memory, [weights][kE][stride]
// with experts past E zero. A lane owns channels c .. c + 7 of a row (c = 8 * lane + 256 * i, one
// 16-byte x vector); in each 256-channel block of a weight row they sit at slots 4 * lane and
// 4 * lane + 128, so each of a warp's two 16-byte reads covers 512 contiguous bytes, free of bank
// conflicts (a plain [kE][d] row read 32 bytes per lane conflicts two ways). The stride is d
// rounded up to 256 plus 4 floats, which puts the copy's stores of one channel's experts in
// different banks.
__host__ __device__ constexpr int warp_weight_stride(int d) { return (d + 255) / 256 * 256 + 4; }
__device__ __forceinline__ int warp_weight_slot(int c) {
  return c / 256 * 256 + c % 256 / 8 * 4 + c % 8 / 4 * 128 + c % 4;
}

// Weight row `row` ([weights][kE] rows) at a lane's channels c .. c + 7 (c a multiple of 8): its
// two conflict-free 16-byte reads in that layout.
__device__ __forceinline__ void lane_weights(const float* w_t, int stride, int row, int c, float4& lo, float4& hi) {
  const float* slots = w_t + row * stride + warp_weight_slot(c);
  lo = *reinterpret_cast<const float4*>(slots);
  hi = *reinterpret_cast<const float4*>(slots + 128);
}

// Copies Wr (and Wn when w_noise is set) into that layout, reading w's [d, E] floats in order
// (coalesced), several per thread in flight. A block-wide copy; the caller synchronises after it.
template <int kE>
__device__ void load_transposed_weights(float* w_t, const float* w_router, const float* w_noise, int d, int experts) {
  constexpr int kBatch = 8;
  const int weights = w_noise != nullptr ? 2 : 1, stride = warp_weight_stride(d), pad = kE - experts;
  for (int i = threadIdx.x; i < weights * pad * stride; i += blockDim.x) {
    const int row = i / stride;
    w_t[(row / pad * kE + experts + row % pad) * stride + i % stride] = 0.0f;
  }
  const int count = d * experts;
  for (int w = 0; w < weights; ++w) {
    const float* src = w == 0 ? w_router : w_noise;
    float* dst = w_t + w * kE * stride;
    for (int first = threadIdx.x; first < count; first += kBatch * blockDim.x) {
      float v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = first + b * blockDim.x;
        v[b] = i < count ? src[i] : 0.0f;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = first + b * blockDim.x;
        if (i < count) dst[i % experts * stride + warp_weight_slot(i / experts)] = v[b];
      }
    }
  }
}

// One step of warp_sum_scatter: a lane keeps half of its 2 * kHalf values (by bit kHalf of its
// lane index) and sends the other half to the partner lane, then adds own + partner as warp_sum does.
template <int kHalf>
__device__ __forceinline__ void warp_sum_scatter_step(float (&s)[32], int lane) {
  const bool upper = (lane & kHalf) != 0;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float keep = upper ? s[i + kHalf] : s[i];
    const float send = upper ? s[i] : s[i + kHalf];
    s[i] = keep + __shfl_xor_sync(0xffffffffu, send, kHalf);
  }
}

// Lane l gets the warp's sum of v[l / kCols][l % kCols] (32 values per lane). Every sum is the
// same tree of additions as warp_sum's butterfly (bit-equal to it), in 31 shuffles instead of
// 32 * 5.
template <int kRows, int kCols>
__device__ __forceinline__ float warp_sum_scatter(const float (&v)[kRows][kCols]) {
  static_assert(kRows * kCols == 32, "one value per lane at the end");
  float s[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = v[i / kCols][i % kCols];
  const int lane = threadIdx.x % 32;
  warp_sum_scatter_step<16>(s, lane);
  warp_sum_scatter_step<8>(s, lane);
  warp_sum_scatter_step<4>(s, lane);
  warp_sum_scatter_step<2>(s, lane);
  warp_sum_scatter_step<1>(s, lane);
  return s[0];
}

// The logits' fast path for few experts (E <= kE) and rows of 16-byte vectors: a warp takes
// 32 / kE tokens at a time with its lanes across the rows (16-byte x reads, a warp's contiguous
// per token), each lane summing its channels for every token and expert. Each weight read from
// shared memory serves all of the warp's tokens: with one token per warp, that traffic (d * kE * 4
// bytes per token, in two-way conflicts) bounded the kernel, not x. The lanes' sums meet in
// warp_sum_scatter (a fixed butterfly: deterministic, and the same sums as one token per warp),
// after which lane l writes token l / kE, expert l % kE. Traffic: x read once, logits written once.
template <class T, int kE, bool kJitter>
__global__ void __launch_bounds__(kThreads, kJitter ? 1 : 2)
    router_logits_warp_kernel(const T* x, const float* w_router, const float* w_noise, float* logits,
                              float* noise_logits, RouterInput in, int experts) {
  constexpr int kTokens = logits_warp_tokens(kE);
  static_assert(kTokens * kE == 32, "one (token, expert) sum per lane");
  extern __shared__ __align__(16) float w_t[];
  const int d = in.d, stride = warp_weight_stride(d);
  const bool gaussian = !kJitter && w_noise != nullptr;  // one noise kind at a time
  load_transposed_weights<kE>(w_t, w_router, gaussian ? w_noise : nullptr, d, experts);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (std::int64_t n0 = (std::int64_t(blockIdx.x) * kWarpsPerBlock + warp) * kTokens; n0 < in.rows;
       n0 += std::int64_t(gridDim.x) * kWarpsPerBlock * kTokens) {
    float acc[kTokens][kE] = {}, noise_acc[kTokens][kE] = {};
    for (int c = lane * 8; c < d; c += 32 * 8) {
      float input[kTokens][8];
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const std::int64_t n = min(n0 + t, in.rows - 1);  // past the last token: a real row, sums unused
        load_vec<8>(x + n * d + c, input[t]);
        if (kJitter) {
          float f[8];
          jitter_factors<8>(in, n, c, f);
#pragma unroll
          for (int k = 0; k < 8; ++k) input[t][k] *= f[k];
        }
      }
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        if (w == 1 && !gaussian) break;
#pragma unroll
        for (int e = 0; e < kE; ++e) {
          float4 lo, hi;
          lane_weights(w_t, stride, w * kE + e, c, lo, hi);
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            float& sum = w == 0 ? acc[t][e] : noise_acc[t][e];
            sum = fmaf(input[t][0], lo.x, sum);
            sum = fmaf(input[t][1], lo.y, sum);
            sum = fmaf(input[t][2], lo.z, sum);
            sum = fmaf(input[t][3], lo.w, sum);
            sum = fmaf(input[t][4], hi.x, sum);
            sum = fmaf(input[t][5], hi.y, sum);
            sum = fmaf(input[t][6], hi.z, sum);
            sum = fmaf(input[t][7], hi.w, sum);
          }
        }
      }
    }
    const std::int64_t n = n0 + lane / kE;
    const int e = lane % kE;
    const bool owner = e < experts && n < in.rows;
    const float logit = warp_sum_scatter(acc);
    if (owner) logits[n * experts + e] = logit;
    if (gaussian) {
      const float noise_logit = warp_sum_scatter(noise_acc);
      if (owner) noise_logits[n * experts + e] = noise_logit;
    }
  }
}

// The input gradient's fast path for few experts (E <= kE) and rows of 16-byte vectors: a warp
// takes two tokens at a time with its lanes across the rows, so each dx access is 16 bytes and a
// warp's are contiguous per token (the lane-per-token layout of router_input_grad_kernel spreads a
// warp over 32 rows). The weights sit in shared memory as in the logits kernel, and each read of
// them serves both tokens, which halves that traffic to below dx's; four tokens' dlogits and dx
// would take more registers than two blocks per SM leave. Each channel sums its experts in order:
// deterministic. Traffic: dx read and written once.
template <class T, int kE, bool kJitter>
__global__ void __launch_bounds__(kThreads)
    router_input_grad_warp_kernel(const float* dlogits, const float* dnoise, const float* w_router,
                                  const float* w_noise, T* dx, RouterInput in, int experts) {
  constexpr int kTokens = kInputGradWarpTokens;
  extern __shared__ __align__(16) float w_t[];
  const int d = in.d, stride = warp_weight_stride(d);
  const bool gaussian = !kJitter && dnoise != nullptr;  // one noise kind at a time
  load_transposed_weights<kE>(w_t, w_router, gaussian ? w_noise : nullptr, d, experts);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (std::int64_t n0 = (std::int64_t(blockIdx.x) * kWarpsPerBlock + warp) * kTokens; n0 < in.rows;
       n0 += std::int64_t(gridDim.x) * kWarpsPerBlock * kTokens) {
    float g[kTokens][kE], gn[kTokens][kE];
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const std::int64_t n = n0 + t;
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const bool inside = e < experts && n < in.rows;
        g[t][e] = inside ? dlogits[n * experts + e] : 0.0f;
        gn[t][e] = inside && gaussian ? dnoise[n * experts + e] : 0.0f;
      }
    }
    for (int c = lane * 8; c < d; c += 32 * 8) {
      // dx first, so that its reads are in flight during the sums (past the last token: a real
      // row, neither changed nor written).
      float cur[kTokens][8];
#pragma unroll
      for (int t = 0; t < kTokens; ++t) load_vec<8>(dx + min(n0 + t, in.rows - 1) * d + c, cur[t]);
      float sum[kTokens][8] = {};
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        if (w == 1 && !gaussian) break;
#pragma unroll
        for (int e = 0; e < kE; ++e) {
          float4 lo, hi;
          lane_weights(w_t, stride, w * kE + e, c, lo, hi);
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            const float scale = w == 0 ? g[t][e] : gn[t][e];
            sum[t][0] = fmaf(scale, lo.x, sum[t][0]);
            sum[t][1] = fmaf(scale, lo.y, sum[t][1]);
            sum[t][2] = fmaf(scale, lo.z, sum[t][2]);
            sum[t][3] = fmaf(scale, lo.w, sum[t][3]);
            sum[t][4] = fmaf(scale, hi.x, sum[t][4]);
            sum[t][5] = fmaf(scale, hi.y, sum[t][5]);
            sum[t][6] = fmaf(scale, hi.z, sum[t][6]);
            sum[t][7] = fmaf(scale, hi.w, sum[t][7]);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const std::int64_t n = n0 + t;
        if (n >= in.rows) break;
        if (kJitter) {
          float f[8];
          jitter_factors<8>(in, n, c, f);
#pragma unroll
          for (int k = 0; k < 8; ++k) cur[t][k] += f[k] * sum[t][k];
        } else {
#pragma unroll
          for (int k = 0; k < 8; ++k) cur[t][k] += sum[t][k];  // a factor of 1: the same sums
        }
        store_vec<8>(dx + n * d + c, cur[t]);
      }
    }
  }
}

// acc[k][e] += x[k] * jitter(n, c + k) * g[e]: one token's outer product of its 8 channels and
// 8 experts' gradients.
template <bool kJitter>
__device__ __forceinline__ void accumulate_outer8(float (&acc)[8][8], const float (&xv)[8], const float (&g)[8],
                                                  const RouterInput& in, std::int64_t n, int c) {
  float f[8];
  if (kJitter) jitter_factors<8>(in, n, c, f);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float input = kJitter ? xv[k] * f[k] : xv[k];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[k][e] = fmaf(input, g[e], acc[k][e]);
  }
}

// The weight gradient's fast path for E <= 8, no Gaussian noise and rows of 16-byte vectors:
// thread (v, r) of a block owns channels 8v .. 8v + 7 for every expert and takes tokens
// begin + r, begin + r + lanes, ... of the block's chunk, so a warp's x reads run along a row
// (the 32-channel-lane kernel reads 8 bytes per lane). With only a few warps per SM (each thread
// keeps 64 sums), a thread loads kRowBatch tokens' x and dlogits before it adds any of them, so
// that several loads are in flight; the sums still take the tokens in order. The token lanes are
// added in lane order through shared memory, and each chunk writes its [d, E] partial sums, which
// add_chunk_sums adds in chunk order: deterministic. Traffic: x read once.
template <class T, bool kJitter>
__global__ void __launch_bounds__(kThreads)
    router_weight_grad_rows_kernel(const T* x, const float* dlogits, float* partial, RouterInput in, int experts,
                                   std::int64_t rows_per_chunk) {
  constexpr int kRowBatch = kJitter ? 1 : 4;  // the jitter draws, not the loads, bound that path
  extern __shared__ __align__(16) float lane_sums[];  // [lanes - 1][vectors][64]
  const int vectors = in.d / 8, lanes = blockDim.x / vectors;
  const int v = threadIdx.x % vectors, r = threadIdx.x / vectors;
  const std::int64_t begin = std::int64_t(blockIdx.x) * rows_per_chunk;
  const std::int64_t end = std::min(in.rows, begin + rows_per_chunk);
  float acc[8][8] = {};
  std::int64_t n = begin + r;
  for (; n + (kRowBatch - 1) * lanes < end; n += kRowBatch * lanes) {
    float xv[kRowBatch][8], g[kRowBatch][8];
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const std::int64_t row = n + b * lanes;
      load_vec<8>(x + row * in.d + 8 * v, xv[b]);
#pragma unroll
      for (int e = 0; e < 8; ++e) g[b][e] = e < experts ? dlogits[row * experts + e] : 0.0f;
    }
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) accumulate_outer8<kJitter>(acc, xv[b], g[b], in, n + b * lanes, 8 * v);
  }
  for (; n < end; n += lanes) {
    float xv[8], g[8];
    load_vec<8>(x + n * in.d + 8 * v, xv);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = e < experts ? dlogits[n * experts + e] : 0.0f;
    accumulate_outer8<kJitter>(acc, xv, g, in, n, 8 * v);
  }
  if (r > 0) {
    float* slot = lane_sums + (std::int64_t(r - 1) * vectors + v) * 64;
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) slot[k * 8 + e] = acc[k][e];
  }
  __syncthreads();
  if (r != 0) return;
  for (int lane = 1; lane < lanes; ++lane) {
    const float* slot = lane_sums + (std::int64_t(lane - 1) * vectors + v) * 64;
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[k][e] += slot[k * 8 + e];
  }
  float* out = partial + std::int64_t(blockIdx.x) * in.d * experts;
#pragma unroll
  for (int k = 0; k < 8; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < experts) out[std::int64_t(8 * v + k) * experts + e] = acc[k][e];
}

// dx[n, c] += jitter(n, c) * sum_e (dlogits[n, e] * Wr[c, e] + dnoise[n, e] * Wn[c, e]), in x's
// dtype (dnoise and Wn for Gaussian noise only; null otherwise). The layout of the logits
// kernel: a lane per token, warps over channels, weight rows broadcast from shared memory. Each
// lane needs its token's whole dlogits row for every channel, so the block stages the 32 rows in
// shared memory for up to kGradExperts experts ([32, grad_stride]: grad_stride / 4 is odd, so a
// quarter warp's 16-byte reads of its 8 rows hit distinct banks) and sums each channel over
// them in a fixed order. Weights: [chunk_channels, weight_stride] chunks as in the logits
// kernel. With more than kGradExperts experts, each group of them adds its part to dx in a
// further pass (rounded to x's dtype each time).
// Traffic: dx read and written once (16-byte accesses when d is a multiple of 8), dlogits read
// once; x itself is not read, only its jitter factors (one Philox draw per element).
template <class T, int kVec>
__global__ void __launch_bounds__(kThreads)
    router_input_grad_kernel(const float* dlogits, const float* dnoise, const float* w_router, const float* w_noise,
                             T* dx, RouterInput in, int experts, int tile_experts, int weight_stride, int grad_stride,
                             int chunk_channels) {
  extern __shared__ float4 smem4[];
  const bool gaussian = dnoise != nullptr;
  const int weights = gaussian ? 2 : 1;
  float* w_s = reinterpret_cast<float*>(smem4);                     // [chunk_channels, weight_stride]
  float* wn_s = w_s + chunk_channels * weight_stride;               // Gaussian only
  float* dl_s = w_s + weights * chunk_channels * weight_stride;     // [32, grad_stride]
  float* dn_s = dl_s + 32 * grad_stride;                            // Gaussian only
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int d = in.d;
  const bool resident = tile_experts >= experts && d <= chunk_channels;
  if (resident) {  // visible after the barriers around the first rows' staging below
    load_weight_tile(w_router, w_s, 0, d, 0, tile_experts, weight_stride, experts);
    if (gaussian) load_weight_tile(w_noise, wn_s, 0, d, 0, tile_experts, weight_stride, experts);
  }
  const std::int64_t tiles = (in.rows + 31) / 32;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t n = tile * 32 + lane;
    const bool active = n < in.rows;
    for (int e0 = 0; e0 < experts; e0 += tile_experts) {
      __syncthreads();  // every warp is done with the previous rows (and weights)
      for (int i = threadIdx.x; i < 32 * weight_stride; i += kThreads) {
        const int t = i / weight_stride, e = i % weight_stride;
        const std::int64_t row = tile * 32 + t;
        const bool inside = row < in.rows && e < tile_experts && e0 + e < experts;
        dl_s[t * grad_stride + e] = inside ? dlogits[row * experts + e0 + e] : 0.0f;
        if (gaussian) dn_s[t * grad_stride + e] = inside ? dnoise[row * experts + e0 + e] : 0.0f;
      }
      for (int c0 = 0; c0 < d; c0 += chunk_channels) {
        const int channels = min(chunk_channels, d - c0);
        if (!resident) {
          __syncthreads();  // every warp is done with the previous chunk
          load_weight_tile(w_router, w_s, c0, channels, e0, tile_experts, weight_stride, experts);
          if (gaussian) load_weight_tile(w_noise, wn_s, c0, channels, e0, tile_experts, weight_stride, experts);
        }
        __syncthreads();  // the staged rows and weights are visible
        if (!active) continue;
        const float4* dl_row = reinterpret_cast<const float4*>(dl_s + lane * grad_stride);
        const float4* dn_row = reinterpret_cast<const float4*>(dn_s + lane * grad_stride);
        T* dx_row = dx + n * d + c0;
        for (int c = warp * kVec; c < channels; c += kWarpsPerBlock * kVec) {
          float sum[kVec];
#pragma unroll
          for (int j = 0; j < kVec; ++j) sum[j] = 0.0f;
          for (int q = 0; q < weight_stride / 4; ++q) {
            const float4 g = dl_row[q];
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
              const float4 w4 = reinterpret_cast<const float4*>(w_s + (c + j) * weight_stride)[q];
              sum[j] = fmaf(g.x, w4.x, fmaf(g.y, w4.y, fmaf(g.z, w4.z, fmaf(g.w, w4.w, sum[j]))));
            }
            if (gaussian) {
              const float4 h = dn_row[q];
#pragma unroll
              for (int j = 0; j < kVec; ++j) {
                const float4 w4 = reinterpret_cast<const float4*>(wn_s + (c + j) * weight_stride)[q];
                sum[j] = fmaf(h.x, w4.x, fmaf(h.y, w4.y, fmaf(h.z, w4.z, fmaf(h.w, w4.w, sum[j]))));
              }
            }
          }
          float f[kVec], out[kVec];
          jitter_factors<kVec>(in, n, c0 + c, f);
          load_vec<kVec>(dx_row + c, out);
#pragma unroll
          for (int j = 0; j < kVec; ++j) out[j] = fmaf(f[j], sum[j], out[j]);
          store_vec<kVec>(dx_row + c, out);
        }
      }
    }
  }
}

// ---- launches ---------------------------------------------------------------------------------

int bits_for(int values) {
  int bits = 1;
  while ((1 << bits) < values) ++bits;
  return bits;
}

// Slots and offsets [E + 1]. Position order (and dropless) with up to kQueueMaxExperts experts:
// counts and ranks, no sort. Otherwise one stable radix sort of the choices on (expert[, ~gate]).
void assign_slots(const RouterSettings& settings, const Routing& r, std::int64_t capacity, const Tensor& offsets,
                  Arena& arena, cudaStream_t stream) {
  const int choices = int(r.tokens * r.top_k);
  const bool by_probability = settings.drop_policy == DropPolicy::probability;
  if (!by_probability && settings.experts <= kQueueMaxExperts) {
    const int experts = settings.experts, blocks = std::max(1, int(grid_for(choices, kQueueBlock)));
    Tensor block_counts = arena.alloc({std::int64_t(blocks) * experts}, DType::i32);
    queue_counts_kernel<<<unsigned(blocks), kQueueBlock, experts * sizeof(int), stream>>>(
        r.expert.ptr<int>(), int(r.tokens), r.top_k, experts, block_counts.ptr<int>());
    SY_CUDA_LAUNCH();
    queue_ranks_kernel<<<unsigned(blocks), kQueueBlock, (kQueueWarps + 2) * experts * sizeof(int), stream>>>(
        r.expert.ptr<int>(), int(r.tokens), r.top_k, experts, block_counts.ptr<int>(), blocks, capacity,
        r.slot.ptr<int>(), r.gate.ptr<float>(), offsets.ptr<int>());
    SY_CUDA_LAUNCH();
    return;
  }
  const int shift = by_probability ? 32 : 0;
  const int end_bit = shift + bits_for(settings.experts);
  std::uint64_t* sorted_keys = nullptr;
  int* sorted_items = nullptr;
  if (choices > 0) {
    auto keys_of = [](const Tensor& t) { return static_cast<std::uint64_t*>(t.data()); };
    Tensor keys = arena.alloc({choices}, DType::i64), keys_out = arena.alloc({choices}, DType::i64);
    Tensor items = arena.alloc({choices}, DType::i32), items_out = arena.alloc({choices}, DType::i32);
    queue_keys_kernel<<<stride_grid(choices), kThreads, 0, stream>>>(
        r.expert.ptr<int>(), r.gate.ptr<float>(), keys_of(keys), items.ptr<int>(), int(r.tokens), r.top_k,
        by_probability);
    SY_CUDA_LAUNCH();
    std::size_t temp_bytes = 0;
    SY_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_of(keys), keys_of(keys_out), items.ptr<int>(),
                                            items_out.ptr<int>(), choices, 0, end_bit, stream));
    Tensor temp = arena.alloc({std::int64_t(temp_bytes / 8 + 1)}, DType::i64);
    SY_CUDA(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_of(keys), keys_of(keys_out),
                                            items.ptr<int>(), items_out.ptr<int>(), choices, 0, end_bit, stream));
    sorted_keys = keys_of(keys_out);
    sorted_items = items_out.ptr<int>();
  }
  queue_offsets_kernel<<<grid_for(settings.experts + 1, kThreads), kThreads, 0, stream>>>(
      sorted_keys, choices, shift, settings.experts, offsets.ptr<int>());
  SY_CUDA_LAUNCH();
  if (choices > 0) {
    assign_slots_kernel<<<stride_grid(choices), kThreads, 0, stream>>>(
        sorted_keys, sorted_items, offsets.ptr<int>(), choices, shift, capacity, r.slot.ptr<int>(),
        r.gate.ptr<float>());
    SY_CUDA_LAUNCH();
  }
}

// Rows per block of column_sums_kernel: 256 keeps each thread's chain of loads short (2048
// took 10 us a call for 16384 rows in 8 blocks on an H200, waiting on latency).
constexpr std::int64_t kColumnSumRows = 256;

// Deterministic partial column sums of v [rows, cols]; returns the number of row blocks.
int column_sums(const float* v, std::int64_t rows, int cols, bool square, double* partial, int max_row_blocks,
                cudaStream_t stream) {
  if (rows == 0) return 0;
  const int row_blocks = int(std::min<std::int64_t>((rows + kColumnSumRows - 1) / kColumnSumRows, max_row_blocks));
  const std::int64_t rows_per_block = (rows + row_blocks - 1) / row_blocks;
  column_sums_kernel<<<dim3(grid_for(cols, 32), unsigned(row_blocks)), dim3(32, kSumRowLanes), 0, stream>>>(
      v, rows, cols, rows_per_block, square, partial);
  SY_CUDA_LAUNCH();
  return row_blocks;
}


bool aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// Blocks for a kernel that strides over `tiles` token tiles: as many as can be resident at
// once, so each loads its weights once when they fit.
template <class Kernel>
unsigned resident_grid(Kernel kernel, std::size_t smem_bytes, std::int64_t tiles) {
  int per_sm = 0;
  SY_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem_bytes));
  return unsigned(std::min<std::int64_t>(tiles, std::int64_t(std::max(per_sm, 1)) * current_device_facts().sms));
}

// Channels per shared-memory weight chunk of `stride` floats per channel (times `weights`): as
// many as fit kWeightSmemBytes, a multiple of `multiple`, no more than d needs.
int weight_chunk_channels(int d, int stride, int weights, int multiple) {
  const int fit = kWeightSmemBytes / (stride * int(sizeof(float)) * weights) / multiple * multiple;
  const int all = (d + multiple - 1) / multiple * multiple;
  return std::max(multiple, std::min(fit, all));
}

constexpr std::size_t logits_smem_limit(int tile) {
  return kWeightSmemBytes + std::size_t(kWarpsPerBlock) * 32 * (tile + 1) * sizeof(float);
}

template <class T, int kVec, int kTile>
void launch_logits(const T* x, const float* w_router, const float* w_noise, float* logits, float* noise_logits,
                   const RouterInput& in, int experts, cudaStream_t stream) {
  const auto kernel = router_logits_kernel<T, kVec, kTile>;
  static const bool allowed = (allow_smem(kernel, logits_smem_limit(kTile)), true);
  (void)allowed;
  const int weights = w_noise != nullptr ? 2 : 1;
  // A multiple of 8 warps x 8 channels keeps every chunk's vectors 16-byte aligned.
  const int chunk = weight_chunk_channels(in.d, kTile, weights, kWarpsPerBlock * 8);
  const std::size_t smem =
      (std::size_t(chunk) * kTile * weights + std::size_t(kWarpsPerBlock) * 32 * (kTile + 1)) * sizeof(float);
  router_logits_kernel<T, kVec, kTile><<<resident_grid(kernel, smem, (in.rows + 31) / 32), kThreads, smem, stream>>>(
      x, w_router, w_noise, logits, noise_logits, in, experts, chunk);
  SY_CUDA_LAUNCH();
}

// The warp-per-token kernels (logits, input gradient) take E <= 16 with the transposed weights
// in at most this much shared memory.
constexpr std::size_t kWarpSmemBytes = 96 << 10;

// Shared memory of the warp-per-token kernels' transposed weights, or 0 when they do not apply
// (they take one noise kind at a time, as the router's settings give it).
std::size_t warp_path_smem(const RouterInput& in, int experts, bool noise, const void* rows) {
  if (experts > 16 || in.d % 8 != 0 || !aligned(rows, 16) || (noise && in.jitter)) return 0;
  const std::size_t weight_rows = std::size_t(noise ? 2 : 1) * (experts <= 8 ? 8 : 16);
  const std::size_t bytes = weight_rows * std::size_t(warp_weight_stride(in.d)) * sizeof(float);
  return bytes <= kWarpSmemBytes ? bytes : 0;
}

// Blocks of a warp-per-token kernel whose warps take `warp_tokens` tokens at a time.
template <class Kernel>
unsigned warp_path_grid(Kernel kernel, std::size_t smem, std::int64_t rows, int warp_tokens) {
  const int block_tokens = kWarpsPerBlock * warp_tokens;
  return resident_grid(kernel, smem, (rows + block_tokens - 1) / block_tokens);
}

template <class T, int kE, bool kJitter>
void launch_logits_warp(const T* x, const float* w_router, const float* w_noise, float* logits, float* noise_logits,
                        const RouterInput& in, int experts, std::size_t smem, cudaStream_t stream) {
  const auto kernel = router_logits_warp_kernel<T, kE, kJitter>;
  static const bool allowed = (allow_smem(kernel, kWarpSmemBytes), true);
  (void)allowed;
  kernel<<<warp_path_grid(kernel, smem, in.rows, logits_warp_tokens(kE)), kThreads, smem, stream>>>(
      x, w_router, w_noise, logits, noise_logits, in, experts);
  SY_CUDA_LAUNCH();
}

// The jitter draws are a compile-time choice: their registers would cost the other paths
// occupancy.
template <class T, int kE>
void launch_logits_warp(const T* x, const float* w_router, const float* w_noise, float* logits, float* noise_logits,
                        const RouterInput& in, int experts, std::size_t smem, cudaStream_t stream) {
  if (in.jitter) {
    launch_logits_warp<T, kE, true>(x, w_router, w_noise, logits, noise_logits, in, experts, smem, stream);
  } else {
    launch_logits_warp<T, kE, false>(x, w_router, w_noise, logits, noise_logits, in, experts, smem, stream);
  }
}

// logits = (x * jitter) · Wr and noise_logits = (x * jitter) · Wn (when w_noise is set).
void router_logits(const Tensor& x, const float* w_router, const float* w_noise, float* logits, float* noise_logits,
                   const RouterInput& in, int experts, cudaStream_t stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = static_cast<const T*>(x.data());
    const bool vector = in.d % 8 == 0 && aligned(xp, 16);
    if (const std::size_t smem = warp_path_smem(in, experts, w_noise != nullptr, xp); smem > 0) {
      if (experts <= 8) {
        launch_logits_warp<T, 8>(xp, w_router, w_noise, logits, noise_logits, in, experts, smem, stream);
      } else {
        launch_logits_warp<T, 16>(xp, w_router, w_noise, logits, noise_logits, in, experts, smem, stream);
      }
    } else if (experts <= kNarrowExperts) {
      if (vector) {
        launch_logits<T, 8, kNarrowExperts>(xp, w_router, w_noise, logits, noise_logits, in, experts, stream);
      } else {
        launch_logits<T, 1, kNarrowExperts>(xp, w_router, w_noise, logits, noise_logits, in, experts, stream);
      }
    } else {
      if (vector) {
        launch_logits<T, 8, kWideExperts>(xp, w_router, w_noise, logits, noise_logits, in, experts, stream);
      } else {
        launch_logits<T, 1, kWideExperts>(xp, w_router, w_noise, logits, noise_logits, in, experts, stream);
      }
    }
  });
}

template <class T, int kCh, int kTile>
void launch_weight_grad(const T* x, const float* dlogits, const float* dnoise, float* partial, float* partial_noise,
                        const RouterInput& in, int experts, int chunks, cudaStream_t stream) {
  const std::int64_t rows_per_chunk = (in.rows + chunks - 1) / chunks;
  const dim3 grid(grid_for(in.d, 32 * kCh), unsigned(chunks), unsigned((experts + kTile - 1) / kTile));
  router_weight_grad_kernel<T, kCh, kTile><<<grid, dim3(32, kRowLanes), 0, stream>>>(
      x, dlogits, dnoise, partial, partial_noise, in, experts, rows_per_chunk);
  SY_CUDA_LAUNCH();
}


// dw_router (+)= (x * jitter)^T · dlogits and dw_noise (+)= (x * jitter)^T · dnoise (when dnoise
// is set): per-chunk partials from the arena, then their ordered sum, stored or added by `mode`.
// Token lanes per block of the fast weight-gradient kernel for rows of `vectors` 16-byte vectors:
// as many as fit kThreads threads and 48 KiB of lane sums, 4 at most; 0 when one row is too wide.
int weight_grad_row_lanes(int vectors) {
  if (vectors <= 0 || vectors > kThreads) return 0;
  const int by_smem = 1 + int((48 << 10) / (std::size_t(vectors) * 64 * sizeof(float)));
  return std::min({kThreads / vectors, 4, by_smem});
}

// The fast path: chunks of at least 64 rows, up to two per SM, and partial sums under kPartialBytes.
bool router_weight_grad_rows(const Tensor& x, const float* dlogits, const float* dnoise, float* dw_router,
                             const RouterInput& in, int experts, GradMode mode, Arena& arena, cudaStream_t stream) {
  const int vectors = in.d / 8, lanes = weight_grad_row_lanes(vectors);
  if (dnoise != nullptr || experts > 8 || in.d % 8 != 0 || lanes == 0 || !aligned(x.data(), 16)) return false;
  const std::int64_t count = std::int64_t(in.d) * experts;
  const std::int64_t by_memory = kPartialBytes / (count * std::int64_t(sizeof(float)));
  const std::int64_t by_rows = (in.rows + 63) / 64, by_sms = 2 * std::int64_t(current_device_facts().sms);
  const int chunks = int(std::max<std::int64_t>(1, std::min({by_rows, by_memory, by_sms})));
  const std::int64_t rows_per_chunk = (in.rows + chunks - 1) / chunks;
  const Tensor partial = arena.alloc({chunks, count}, DType::f32);
  const std::size_t smem = std::size_t(lanes - 1) * vectors * 64 * sizeof(float);
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const auto kernel = in.jitter ? router_weight_grad_rows_kernel<T, true> : router_weight_grad_rows_kernel<T, false>;
    kernel<<<unsigned(chunks), vectors * lanes, smem, stream>>>(static_cast<const T*>(x.data()), dlogits,
                                                                partial.ptr<float>(), in, experts, rows_per_chunk);
  });
  SY_CUDA_LAUNCH();
  add_chunk_sums(partial.ptr<float>(), chunks, count, dw_router, mode == GradMode::accumulate, stream);
  return true;
}

void router_weight_grad(const Tensor& x, const float* dlogits, const float* dnoise, float* dw_router, float* dw_noise,
                        const RouterInput& in, int experts, GradMode mode, Arena& arena, cudaStream_t stream) {
  if (router_weight_grad_rows(x, dlogits, dnoise, dw_router, in, experts, mode, arena, stream)) return;
  const std::int64_t count = std::int64_t(in.d) * experts;
  const int weights = dnoise != nullptr ? 2 : 1;
  const std::int64_t by_rows = (in.rows + kMinChunkRows - 1) / kMinChunkRows;
  const std::int64_t by_memory = kPartialBytes / (count * std::int64_t(sizeof(float)) * weights);
  const int chunks = int(std::max<std::int64_t>(1, std::min({by_rows, by_memory, std::int64_t(kMaxRowChunks)})));
  const Tensor partial = arena.alloc({chunks, count}, DType::f32);
  const Tensor partial_noise = dnoise != nullptr ? arena.alloc({chunks, count}, DType::f32) : Tensor{};
  float* noise_out = dnoise != nullptr ? partial_noise.ptr<float>() : nullptr;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = static_cast<const T*>(x.data());
    if (experts > kNarrowExperts) {
      launch_weight_grad<T, 1, kWideExperts>(xp, dlogits, dnoise, partial.ptr<float>(), noise_out, in, experts, chunks,
                                             stream);
    } else if (in.d % 4 == 0 && aligned(xp, 4 * sizeof(T))) {
      launch_weight_grad<T, 4, kNarrowExperts>(xp, dlogits, dnoise, partial.ptr<float>(), noise_out, in, experts,
                                               chunks, stream);
    } else {
      launch_weight_grad<T, 1, kNarrowExperts>(xp, dlogits, dnoise, partial.ptr<float>(), noise_out, in, experts,
                                               chunks, stream);
    }
  });
  add_chunk_sums(partial.ptr<float>(), chunks, count, dw_router, mode == GradMode::accumulate, stream);
  if (dnoise != nullptr) add_chunk_sums(noise_out, chunks, count, dw_noise, mode == GradMode::accumulate, stream);
}

constexpr std::size_t input_grad_smem_limit() {
  return kWeightSmemBytes + 2 * 32 * std::size_t(kGradExperts + 4) * sizeof(float);
}

template <class T, int kVec>
void launch_input_grad(const float* dlogits, const float* dnoise, const float* w_router, const float* w_noise, T* dx,
                       const RouterInput& in, int experts, cudaStream_t stream) {
  const auto kernel = router_input_grad_kernel<T, kVec>;
  static const bool allowed = (allow_smem(kernel, input_grad_smem_limit()), true);
  (void)allowed;
  const int weights = dnoise != nullptr ? 2 : 1;
  const int tile_experts = std::min(experts, kGradExperts);
  const int weight_stride = (tile_experts + 3) / 4 * 4;
  const int grad_stride = weight_stride / 4 % 2 == 1 ? weight_stride : weight_stride + 4;
  const int chunk = weight_chunk_channels(in.d, weight_stride, weights, 8);
  const std::size_t smem =
      std::size_t(weights) * (std::size_t(chunk) * weight_stride + 32 * grad_stride) * sizeof(float);
  router_input_grad_kernel<T, kVec><<<resident_grid(kernel, smem, (in.rows + 31) / 32), kThreads, smem, stream>>>(
      dlogits, dnoise, w_router, w_noise, dx, in, experts, tile_experts, weight_stride, grad_stride, chunk);
  SY_CUDA_LAUNCH();
}

template <class T, int kE, bool kJitter>
void launch_input_grad_warp(const float* dlogits, const float* dnoise, const float* w_router, const float* w_noise,
                            T* dx, const RouterInput& in, int experts, std::size_t smem, cudaStream_t stream) {
  const auto kernel = router_input_grad_warp_kernel<T, kE, kJitter>;
  static const bool allowed = (allow_smem(kernel, kWarpSmemBytes), true);
  (void)allowed;
  kernel<<<warp_path_grid(kernel, smem, in.rows, kInputGradWarpTokens), kThreads, smem, stream>>>(
      dlogits, dnoise, w_router, w_noise, dx, in, experts);
  SY_CUDA_LAUNCH();
}

template <class T, int kE>
void launch_input_grad_warp(const float* dlogits, const float* dnoise, const float* w_router, const float* w_noise,
                            T* dx, const RouterInput& in, int experts, std::size_t smem, cudaStream_t stream) {
  if (in.jitter) {
    launch_input_grad_warp<T, kE, true>(dlogits, dnoise, w_router, w_noise, dx, in, experts, smem, stream);
  } else {
    launch_input_grad_warp<T, kE, false>(dlogits, dnoise, w_router, w_noise, dx, in, experts, smem, stream);
  }
}

// dx += jitter * (dlogits · Wr^T + dnoise · Wn^T), in dx's dtype.
void router_input_grad(const float* dlogits, const float* dnoise, const float* w_router, const float* w_noise,
                       const Tensor& dx, const RouterInput& in, int experts, cudaStream_t stream) {
  dispatch_float(dx, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T* dxp = static_cast<T*>(dx.data());
    if (const std::size_t warp_smem = warp_path_smem(in, experts, dnoise != nullptr, dxp); warp_smem > 0) {
      if (experts <= 8) {
        launch_input_grad_warp<T, 8>(dlogits, dnoise, w_router, w_noise, dxp, in, experts, warp_smem, stream);
      } else {
        launch_input_grad_warp<T, 16>(dlogits, dnoise, w_router, w_noise, dxp, in, experts, warp_smem, stream);
      }
    } else if (in.d % 8 == 0 && aligned(dxp, 16)) {
      launch_input_grad<T, 8>(dlogits, dnoise, w_router, w_noise, dxp, in, experts, stream);
    } else {
      launch_input_grad<T, 1>(dlogits, dnoise, w_router, w_noise, dxp, in, experts, stream);
    }
  });
}

RouterInput router_input(const RouterState& state, bool jitter) {
  SY_CHECK(state.x.size(1) <= INT_MAX) << "router: d_model " << state.x.size(1) << " exceeds the kernels' int range";
  RouterInput in;
  in.rows = state.x.size(0);
  in.d = int(state.x.size(1));
  in.first_token = std::uint64_t(state.first_token);
  in.key = state.key;
  in.eps = state.settings.jitter_eps;
  in.jitter = jitter;
  return in;
}

}  // namespace

void router_forward(const RouterSettings& settings, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                    bool gaussian, bool jitter, std::int64_t capacity, Arena& arena, RouterState& state,
                    const Tensor& local, StreamRef stream) {
  const std::int64_t N = x.size(0);
  const int E = settings.experts, k = settings.top_k;
  const cudaStream_t s = to_cuda(stream);
  const Routing& r = state.routing;
  if (N > 0) {
    router_logits(x, w_router.ptr<float>(), gaussian ? w_noise.ptr<float>() : nullptr, state.logits.ptr<float>(),
                  gaussian ? state.noise_logits.ptr<float>() : nullptr, router_input(state, jitter), E, s);
    softmax_topk_kernel<<<grid_for(N, kWarpsPerBlock), kThreads, 0, s>>>(
        state.logits.ptr<float>(), gaussian ? state.noise_logits.ptr<float>() : nullptr,
        gaussian ? state.noise.ptr<float>() : nullptr, state.probs.ptr<float>(), state.lse.ptr<float>(),
        r.expert.ptr<int>(), r.gate.ptr<float>(), int(N), E, k, settings.renormalize, state.key,
        std::uint64_t(state.first_token));
    SY_CUDA_LAUNCH();
  }
  Tensor offsets = arena.alloc({E + 1}, DType::i32);
  assign_slots(settings, r, capacity, offsets, arena, s);

  constexpr int kMaxRowBlocks = 4096;
  const std::int64_t partial_rows =
      std::min<std::int64_t>((N + kColumnSumRows - 1) / kColumnSumRows, kMaxRowBlocks) + 1;
  Tensor prob_partials = arena.alloc({partial_rows * E}, DType::f64);
  Tensor lse_partials = arena.alloc({partial_rows}, DType::f64);
  const int row_blocks =
      column_sums(state.probs.ptr<float>(), N, E, false, prob_partials.ptr<double>(), kMaxRowBlocks, s);
  column_sums(state.lse.ptr<float>(), N, 1, true, lse_partials.ptr<double>(), kMaxRowBlocks, s);

  router_stats_kernel<<<1, kThreads, 0, s>>>(offsets.ptr<int>(), prob_partials.ptr<double>(),
                                             lse_partials.ptr<double>(), row_blocks, E, int(N), capacity,
                                             r.expert_counts.ptr<int>(), local.ptr<double>());
  SY_CUDA_LAUNCH();
}

void router_losses(const RouterSettings& settings, const Tensor& local, const Tensor& global, RouterState& state,
                   StreamRef stream) {
  router_losses_kernel<<<1, kThreads, 0, to_cuda(stream)>>>(
      local.ptr<double>(), global.ptr<double>(), settings.loss_scope == RouterLossScope::global, settings.experts,
      settings.top_k, settings.aux_loss_coef, settings.z_loss_coef, state.aux_loss.ptr<float>(),
      state.z_loss.ptr<float>(), state.aux_grad.ptr<float>(), state.z_grad.ptr<float>(),
      state.tokens_per_expert.ptr<std::int64_t>(), state.dropped_fraction.ptr<float>());
  SY_CUDA_LAUNCH();
}

void router_backward(const RouterState& state, const Tensor& w_router, const Tensor& w_noise, const Tensor& dgate,
                     const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, GradMode mode, Arena& arena,
                     StreamRef stream) {
  const RouterSettings& settings = state.settings;
  const Routing& r = state.routing;
  const std::int64_t N = r.tokens;
  const int E = r.experts;
  const cudaStream_t s = to_cuda(stream);
  const bool gaussian = state.noise.defined();
  if (N == 0 || state.x.size(1) == 0) {  // no tokens or no channels: nothing to add, zeros to store
    if (mode == GradMode::overwrite) {
      SY_CUDA(cudaMemsetAsync(dw_router.data(), 0, dw_router.bytes(), s));
      if (gaussian) SY_CUDA(cudaMemsetAsync(dw_noise.data(), 0, dw_noise.bytes(), s));
    }
    return;
  }
  const bool jitter = state.training && settings.noise == RouterNoise::jitter && settings.jitter_eps > 0;
  Tensor dlogits = arena.alloc({N, E}, DType::f32);
  Tensor dnoise = gaussian ? arena.alloc({N, E}, DType::f32) : Tensor{};
  logits_grad_kernel<<<grid_for(N, kWarpsPerBlock), kThreads, 0, s>>>(
      state.probs.ptr<float>(), state.lse.ptr<float>(), r.expert.ptr<int>(), r.slot.ptr<int>(), dgate.ptr<float>(),
      state.aux_grad.ptr<float>(), state.z_grad.ptr<float>(), gaussian ? state.noise.ptr<float>() : nullptr,
      gaussian ? state.noise_logits.ptr<float>() : nullptr, dlogits.ptr<float>(),
      gaussian ? dnoise.ptr<float>() : nullptr, int(N), E, r.top_k, settings.renormalize);
  SY_CUDA_LAUNCH();
  const RouterInput in = router_input(state, jitter);
  const float* dnoise_ptr = gaussian ? dnoise.ptr<float>() : nullptr;
  router_weight_grad(state.x, dlogits.ptr<float>(), dnoise_ptr, dw_router.ptr<float>(),
                     gaussian ? dw_noise.ptr<float>() : nullptr, in, E, mode, arena, s);
  router_input_grad(dlogits.ptr<float>(), dnoise_ptr, w_router.ptr<float>(), gaussian ? w_noise.ptr<float>() : nullptr,
                    dx, in, E, s);
}

}  // namespace sy::cuda
