// Softmax cross-entropy on CUDA: one block per row, fp32 math. The forward reads the logits once
// (online max and sum in a single pass); the backward reads them once more and writes dlogits
// once, possibly over the logits themselves; training runs both in one kernel whose second read
// of a row hits L2. All move 16-byte packs when the row length and the base addresses allow it,
// single elements otherwise.
//
// A target outside [0, V) that is not ignore_index is treated as ignored here (loss 0, zero
// gradient): the CPU path rejects it, but a kernel cannot raise, and reading logits[row, target]
// would be out of bounds.
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kMaxThreads = 512;

// kVec consecutive elements moved as one load or store: 16 bytes for the vector path
// (4 f32 or 8 bf16), one element for the scalar path.
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Running softmax statistics of a set of logits: its max and sum(exp(x - max)).
struct MaxSum {
  float max;
  float sum;
};

// Combines two sets. An empty set (or one of only -inf logits) is {-inf, 0}; two of them stay
// {-inf, 0} instead of producing exp(-inf - -inf) = NaN.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return {max, 0.0f};
  return {max, a.sum * __expf(a.max - max) + b.sum * __expf(b.max - max)};
}

// Block-wide merge in a fixed order (butterfly in each warp, then warp 0 over the warps), so
// the result is bit-reproducible. Every thread gets the result; `scratch` holds 32 entries.
__device__ __forceinline__ MaxSum block_merge(MaxSum v, MaxSum* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, v.max, offset), __shfl_xor_sync(0xffffffffu, v.sum, offset)};
    v = merge(v, other);
  }
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : MaxSum{-INFINITY, 0.0f};
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, v.max, offset), __shfl_xor_sync(0xffffffffu, v.sum, offset)};
    v = merge(v, other);
  }
  return v;
}

// Adds a pack of logits to a thread's running statistics: rescales the sum only when the pack
// raises the running max, so about one exp per element.
template <class T, int kVec>
__device__ __forceinline__ void add_pack(MaxSum& stats, const Pack<T, kVec>& pack) {
  float values[kVec];
  float pack_max = -INFINITY;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    values[k] = load_f32(&pack.v[k]);
    pack_max = fmaxf(pack_max, values[k]);
  }
  if (pack_max > stats.max) {
    stats.sum *= __expf(stats.max - pack_max);
    stats.max = pack_max;
  }
  if (stats.max == -INFINITY) return;  // only -inf so far: nothing to add
#pragma unroll
  for (int k = 0; k < kVec; ++k) stats.sum += __expf(values[k] - stats.max);
}

// The gradient of pack p in place: (exp(x - lse) - [j == target]) * grad_scale, or zeros for a
// row that does not count.
template <class T, int kVec>
__device__ __forceinline__ void pack_gradient(Pack<T, kVec>& pack, int p, float row_lse, int target, bool counted,
                                              float grad_scale) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int j = p * kVec + k;
    const float value = counted ? (__expf(load_f32(&pack.v[k]) - row_lse) - (j == target ? 1.0f : 0.0f)) * grad_scale
                                : 0.0f;
    store_f32(&pack.v[k], value);
  }
}

// The statistics of one row's packs, each thread over packs threadIdx.x, + blockDim.x, ... in that
// order, four loads in flight at a time; then merged over the block.
template <class T, int kVec>
__device__ __forceinline__ MaxSum row_stats(const Pack<T, kVec>* packs, int pack_count, MaxSum* scratch) {
  MaxSum stats{-INFINITY, 0.0f};
  const int stride = blockDim.x;
  int p = threadIdx.x;
  for (; p + 3 * stride < pack_count; p += 4 * stride) {
    const Pack<T, kVec> a = packs[p], b = packs[p + stride], c = packs[p + 2 * stride], d = packs[p + 3 * stride];
    add_pack(stats, a);
    add_pack(stats, b);
    add_pack(stats, c);
    add_pack(stats, d);
  }
  for (; p < pack_count; p += stride) add_pack(stats, packs[p]);
  return block_merge(stats, scratch);
}

// lse[row] = log(sum_j exp(x[row, j])); losses[row] = lse[row] - x[row, target] (0 if ignored).
// Traffic: V elements read once per row; the target logit is one more (cached) read. Each thread
// keeps online statistics over its strided packs: rescaling only when a pack raises the running
// max, so about one exp per element. __expf: its error (a few ulp near the max, more only for
// terms below e^-20 that barely contribute) is far below the f32 tolerance.
template <class T, int kVec>
__global__ void __launch_bounds__(kMaxThreads)
    cross_entropy_forward_kernel(const T* __restrict__ logits, const std::int32_t* __restrict__ targets,
                                 float* __restrict__ losses, float* __restrict__ lse, int vocab, int ignore_index) {
  __shared__ MaxSum scratch[32];
  const int row = blockIdx.x;
  const T* x = logits + std::int64_t(row) * vocab;
  const MaxSum stats = row_stats(reinterpret_cast<const Pack<T, kVec>*>(x), vocab / kVec, scratch);
  if (threadIdx.x == 0) {
    const float row_lse = stats.max + logf(stats.sum);
    const std::int32_t target = targets[row];
    const bool counted = target != ignore_index && target >= 0 && target < vocab;
    lse[row] = row_lse;
    losses[row] = counted ? row_lse - load_f32(x + target) : 0.0f;
  }
}

// dlogits[row, j] = (exp(x[row, j] - lse[row]) - [j == target]) * grad_scale, zero on ignored
// rows. Traffic: V elements read and V written per row (ignored rows are only written). Every
// element is read and then written by the same thread and touched by no other, so dlogits may
// alias logits; for that reason the pointers are not __restrict__.
template <class T, int kVec>
__global__ void __launch_bounds__(kMaxThreads)
    cross_entropy_backward_kernel(const T* logits, const std::int32_t* targets, const float* lse, T* dlogits,
                                  int vocab, float grad_scale, int ignore_index) {
  const int row = blockIdx.x;
  const std::int64_t base = std::int64_t(row) * vocab;
  const auto* in = reinterpret_cast<const Pack<T, kVec>*>(logits + base);
  auto* out = reinterpret_cast<Pack<T, kVec>*>(dlogits + base);
  const int pack_count = vocab / kVec;
  const std::int32_t target = targets[row];
  const bool counted = target != ignore_index && target >= 0 && target < vocab;
  const float row_lse = lse[row];
  for (int p = threadIdx.x; p < pack_count; p += blockDim.x) {
    Pack<T, kVec> pack{};
    if (counted) pack = in[p];  // ignored rows are only written
    pack_gradient(pack, p, row_lse, target, counted, grad_scale);
    out[p] = pack;
  }
}

// The training pass in one kernel: the forward's statistics, then every element's gradient from
// a second read of the row, which this block has just read, so it comes from L2: the logits
// cross DRAM once each way instead of read twice. dlogits may alias logits: each element is read
// and then written by one thread, and the target logit is read before the barrier that precedes
// every write.
template <class T, int kVec>
__global__ void __launch_bounds__(kMaxThreads)
    cross_entropy_fused_kernel(const T* logits, const std::int32_t* targets, float* losses, float* lse, T* dlogits,
                               int vocab, float grad_scale, int ignore_index) {
  __shared__ MaxSum scratch[32];
  const int row = blockIdx.x;
  const std::int64_t base = std::int64_t(row) * vocab;
  const auto* in = reinterpret_cast<const Pack<T, kVec>*>(logits + base);
  auto* out = reinterpret_cast<Pack<T, kVec>*>(dlogits + base);
  const int pack_count = vocab / kVec;
  const MaxSum stats = row_stats(in, pack_count, scratch);
  // Lanes may differ in the last bit (the butterfly merges in lane-dependent order); every thread
  // takes lane 0's value, which is thread 0's, the lse the two-pass backward reads.
  const float row_lse = __shfl_sync(0xffffffffu, stats.max + logf(stats.sum), 0);
  const std::int32_t target = targets[row];
  const bool counted = target != ignore_index && target >= 0 && target < vocab;
  if (threadIdx.x == 0) {
    lse[row] = row_lse;
    losses[row] = counted ? row_lse - load_f32(logits + base + target) : 0.0f;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pack_count; p += blockDim.x) {
    Pack<T, kVec> pack{};
    if (counted) pack = in[p];
    pack_gradient(pack, p, row_lse, target, counted, grad_scale);
    out[p] = pack;
  }
}

// Threads per block: enough warps to cover the row's packs once, at most kMaxThreads.
int threads_for(int pack_count) {
  const int warps = (pack_count + 31) / 32;
  return warps * 32 < kMaxThreads ? warps * 32 : kMaxThreads;
}

bool aligned_16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_sizes(const Tensor& logits) {
  SY_CHECK(logits.size(0) <= INT_MAX && logits.size(1) <= INT_MAX)
      << "cross_entropy on CUDA: at most 2^31 - 1 rows and classes, got " << logits.describe();
}

// Calls launch(T*, vec, rows, vocab, threads) for one block per row: vec is 16-byte packs
// (std::integral_constant<int, 16 / sizeof(T)>) when V is a multiple of a pack and every base
// in `bases` is 16-byte aligned (then every row base is), single elements (1) otherwise.
template <class Launch>
void launch_rows(const Tensor& logits, std::initializer_list<const void*> bases, Launch&& launch) {
  check_sizes(logits);
  const int rows = int(logits.size(0)), vocab = int(logits.size(1));
  if (rows == 0) return;
  dispatch_float(logits, [&](auto* type) {
    constexpr int kVec = 16 / sizeof(*type);
    bool packed = vocab % kVec == 0;
    for (const void* base : bases) packed = packed && aligned_16(base);
    if (packed) {
      launch(type, std::integral_constant<int, kVec>{}, rows, vocab, threads_for(vocab / kVec));
    } else {
      launch(type, std::integral_constant<int, 1>{}, rows, vocab, threads_for(vocab));
    }
  });
  SY_CUDA_LAUNCH();
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor& lse,
                           int ignore_index, StreamRef stream) {
  launch_rows(logits, {logits.data()}, [&](auto* type, auto vec, int rows, int vocab, int threads) {
    using T = std::remove_pointer_t<decltype(type)>;
    cross_entropy_forward_kernel<T, decltype(vec)::value><<<rows, threads, 0, to_cuda(stream)>>>(
        static_cast<const T*>(logits.data()), targets.ptr<std::int32_t>(), losses.ptr<float>(), lse.ptr<float>(),
        vocab, ignore_index);
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dlogits,
                            float grad_scale, int ignore_index, StreamRef stream) {
  launch_rows(logits, {logits.data(), dlogits.data()}, [&](auto* type, auto vec, int rows, int vocab, int threads) {
    using T = std::remove_pointer_t<decltype(type)>;
    cross_entropy_backward_kernel<T, decltype(vec)::value><<<rows, threads, 0, to_cuda(stream)>>>(
        static_cast<const T*>(logits.data()), targets.ptr<std::int32_t>(), lse.ptr<float>(),
        static_cast<T*>(dlogits.data()), vocab, grad_scale, ignore_index);
  });
}

void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                    const Tensor& lse, const Tensor& dlogits, float grad_scale, int ignore_index,
                                    StreamRef stream) {
  launch_rows(logits, {logits.data(), dlogits.data()}, [&](auto* type, auto vec, int rows, int vocab, int threads) {
    using T = std::remove_pointer_t<decltype(type)>;
    cross_entropy_fused_kernel<T, decltype(vec)::value><<<rows, threads, 0, to_cuda(stream)>>>(
        static_cast<const T*>(logits.data()), targets.ptr<std::int32_t>(), losses.ptr<float>(), lse.ptr<float>(),
        static_cast<T*>(dlogits.data()), vocab, grad_scale, ignore_index);
  });
}

}  // namespace sy::cuda
