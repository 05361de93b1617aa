// Router on CUDA, forward then backward. Logits and their weight gradients go through core
// gemm (cuBLAS, fp32); the kernels here do what sits between the GEMMs. Nothing waits on the
// host and nothing sums floats with atomics, so a run is bit-reproducible.
#include <climits>

#include <cub/device/device_radix_sort.cuh>

#include "core/ops.h"
#include "core/ops/cuda_common.cuh"
#include "moe/router_kernels.h"

namespace sy::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;  // token kernels: one warp per token
constexpr int kThreads = 256;
constexpr int kMaxGrid = 4096;  // grid-stride kernels: enough blocks to fill an H200 several times
static_assert(kWarpsPerBlock * 32 == kThreads);

unsigned stride_grid(std::int64_t n) { return unsigned(std::min<std::int64_t>(grid_for(n, kThreads), kMaxGrid)); }

__device__ __forceinline__ float softplus_f32(float h) { return h > 20.0f ? h : log1pf(expf(h)); }
__device__ __forceinline__ float sigmoid_f32(float h) { return 1.0f / (1.0f + expf(-h)); }

// ---- forward --------------------------------------------------------------------------------

// input[i] = x[i] * jitter factor (or 1), in f32 for the logits GEMM: one read of x, one f32
// write; the Philox draw per element is cheaper than the memory traffic. Grid-stride, int64
// indices. The jitter counter of element i is counter_offset + i = global token * d + c.
template <class T>
__global__ void router_input_kernel(const T* x, float* input, std::int64_t count, std::uint64_t counter_offset,
                                    RngKey key, float eps, bool jitter) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const float factor = jitter ? router_jitter_factor(key, counter_offset + std::uint64_t(i), eps) : 1.0f;
    input[i] = load_f32(x + i) * factor;
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

// dx[i] = dinput[i] * jitter factor, converted to x's dtype: the jitter noise is a constant
// factor on the router input. One f32 read, one write; grid-stride, int64 indices.
template <class T>
__global__ void input_grad_kernel(const float* dinput, T* dx, std::int64_t count, std::uint64_t counter_offset,
                                  RngKey key, float eps, bool jitter) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const float factor = jitter ? router_jitter_factor(key, counter_offset + std::uint64_t(i), eps) : 1.0f;
    store_f32(dx + i, dinput[i] * factor);
  }
}

int bits_for(int values) {
  int bits = 1;
  while ((1 << bits) < values) ++bits;
  return bits;
}

// Slots by one stable radix sort of the choices on (expert[, ~gate]); fills offsets [E + 1].
void assign_slots(const RouterSettings& settings, const Routing& r, std::int64_t capacity, const Tensor& offsets,
                  Arena& arena, cudaStream_t stream) {
  const int choices = int(r.tokens * r.top_k);
  const bool by_probability = settings.drop_policy == DropPolicy::probability;
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

// Deterministic partial column sums of v [rows, cols]; returns the number of row blocks.
int column_sums(const float* v, std::int64_t rows, int cols, bool square, double* partial, int max_row_blocks,
                cudaStream_t stream) {
  if (rows == 0) return 0;
  const int row_blocks = int(std::min<std::int64_t>((rows + 2047) / 2048, max_row_blocks));
  const std::int64_t rows_per_block = (rows + row_blocks - 1) / row_blocks;
  column_sums_kernel<<<dim3(grid_for(cols, 32), unsigned(row_blocks)), dim3(32, kSumRowLanes), 0, stream>>>(
      v, rows, cols, rows_per_block, square, partial);
  SY_CUDA_LAUNCH();
  return row_blocks;
}

}  // namespace

void router_forward(const RouterSettings& settings, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                    bool gaussian, bool jitter, std::int64_t capacity, Arena& arena, RouterState& state,
                    const Tensor& local, StreamRef stream) {
  const std::int64_t N = x.size(0), d = x.size(1);
  const int E = settings.experts, k = settings.top_k;
  const cudaStream_t s = to_cuda(stream);
  const Routing& r = state.routing;
  if (N > 0) {
    if (state.router_input.data() != x.data()) {
      dispatch_float(x, [&](auto* type) {
        using T = std::remove_pointer_t<decltype(type)>;
        router_input_kernel<T><<<stride_grid(N * d), kThreads, 0, s>>>(
            static_cast<const T*>(x.data()), state.router_input.ptr<float>(), N * d,
            std::uint64_t(state.first_token) * std::uint64_t(d), state.key, settings.jitter_eps, jitter);
      });
      SY_CUDA_LAUNCH();
    }
    sy::gemm(state.router_input, w_router, state.logits, false, false, 1.0f, 0.0f, stream);
    if (gaussian) sy::gemm(state.router_input, w_noise, state.noise_logits, false, false, 1.0f, 0.0f, stream);
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
  const std::int64_t partial_rows = std::min<std::int64_t>((N + 2047) / 2048, kMaxRowBlocks) + 1;
  Tensor prob_partials = arena.alloc({partial_rows * E}, DType::f64);
  Tensor lse_partials = arena.alloc({partial_rows}, DType::f64);
  const int row_blocks = column_sums(state.probs.ptr<float>(), N, E, false, prob_partials.ptr<double>(), kMaxRowBlocks, s);
  column_sums(state.lse.ptr<float>(), N, 1, true, lse_partials.ptr<double>(), kMaxRowBlocks, s);

  router_stats_kernel<<<1, kThreads, 0, s>>>(offsets.ptr<int>(), prob_partials.ptr<double>(), lse_partials.ptr<double>(),
                                             row_blocks, E, int(N), capacity, r.expert_counts.ptr<int>(),
                                             local.ptr<double>());
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
                     const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, Arena& arena,
                     StreamRef stream) {
  const RouterSettings& settings = state.settings;
  const Routing& r = state.routing;
  const std::int64_t N = r.tokens, d = state.router_input.size(1);
  const int E = r.experts;
  if (N == 0) return;
  const cudaStream_t s = to_cuda(stream);
  const bool gaussian = state.noise.defined();
  const bool jitter = state.training && settings.noise == RouterNoise::jitter && settings.jitter_eps > 0;
  Tensor dlogits = arena.alloc({N, E}, DType::f32);
  Tensor dnoise = gaussian ? arena.alloc({N, E}, DType::f32) : Tensor{};
  logits_grad_kernel<<<grid_for(N, kWarpsPerBlock), kThreads, 0, s>>>(
      state.probs.ptr<float>(), state.lse.ptr<float>(), r.expert.ptr<int>(), r.slot.ptr<int>(), dgate.ptr<float>(),
      state.aux_grad.ptr<float>(), state.z_grad.ptr<float>(), gaussian ? state.noise.ptr<float>() : nullptr,
      gaussian ? state.noise_logits.ptr<float>() : nullptr, dlogits.ptr<float>(),
      gaussian ? dnoise.ptr<float>() : nullptr, int(N), E, r.top_k, settings.renormalize);
  SY_CUDA_LAUNCH();
  sy::gemm(state.router_input, dlogits, dw_router, true, false, 1.0f, 1.0f, stream);
  if (gaussian) sy::gemm(state.router_input, dnoise, dw_noise, true, false, 1.0f, 1.0f, stream);
  // An f32 x without jitter takes the GEMM output directly; otherwise scale and convert after.
  const bool direct = state.x_dtype == DType::f32 && !jitter;
  const Tensor dinput = direct ? dx : arena.alloc({N, d}, DType::f32);
  sy::gemm(dlogits, w_router, dinput, false, true, 1.0f, 0.0f, stream);
  if (gaussian) sy::gemm(dnoise, w_noise, dinput, false, true, 1.0f, 1.0f, stream);
  if (!direct) {
    dispatch_float(dx, [&](auto* type) {
      using T = std::remove_pointer_t<decltype(type)>;
      input_grad_kernel<T><<<stride_grid(N * d), kThreads, 0, s>>>(
          dinput.ptr<float>(), static_cast<T*>(dx.data()), N * d, std::uint64_t(state.first_token) * std::uint64_t(d),
          state.key, settings.jitter_eps, jitter);
    });
    SY_CUDA_LAUNCH();
  }
}

}  // namespace sy::cuda
