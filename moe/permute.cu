// MoE row movements on CUDA. Every kernel is bandwidth-bound: each d-wide row is read once and
// written once (combine reads k rows per token). One block per token or choice, threads across
// the row, so a warp touches contiguous memory; k and E are small and need no tiling. Sums over
// the k choices run in choice order, so results are deterministic. Rows move 8 elements (16
// bytes of bf16) per thread access when d and the pointers allow (VEC = 8), else one (VEC = 1):
// 2-byte accesses left these kernels at about a third of the copy bandwidth.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "core/ops/elementwise_map.cuh"
#include "moe/permute_cuda.h"

namespace sy::cuda {
namespace {

constexpr int kRowThreads = 128;

// Row of choice c in the expert-ordered buffer, or -1 if dropped.
__device__ __forceinline__ std::int64_t choice_row(const std::int32_t* expert, const std::int32_t* slot,
                                                   const std::int32_t* offsets, std::int64_t c) {
  const std::int32_t s = slot[c];
  return s < 0 ? -1 : std::int64_t(offsets[expert[c]]) + s;
}

// One thread: E is at most a few hundred, far below a launch's own cost.
__global__ void expert_offsets_kernel(const std::int32_t* counts, int experts, std::int64_t capacity,
                                      std::int32_t* offsets) {
  std::int32_t total = 0;
  for (int e = 0; e <= experts; ++e) {
    offsets[e] = total;
    if (e < experts) total += capacity > 0 ? std::int32_t(capacity) : counts[e];
  }
}

template <class T, int VEC>
__global__ void scatter_kernel(const T* x, const std::int32_t* expert, const std::int32_t* slot,
                               const std::int32_t* offsets, T* send, int k, int d) {
  const std::int64_t c = blockIdx.x;
  const std::int64_t row = choice_row(expert, slot, offsets, c);
  if (row < 0) return;
  const T* src = x + (c / k) * d;
  T* dst = send + row * d;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float v[VEC];
    load_vec<VEC>(src + i, v);
    store_vec<VEC>(dst + i, v);
  }
}

// kWeighted: out = sum_j gate * rows (combine); otherwise out = sum_j rows (gather-sum).
template <class T, int VEC, bool kWeighted>
__global__ void gather_kernel(const T* rows, const std::int32_t* expert, const std::int32_t* slot,
                              const std::int32_t* offsets, const float* gate, T* out, int k, int d) {
  const std::int64_t n = blockIdx.x;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float acc[VEC] = {};
    for (int j = 0; j < k; ++j) {
      const std::int64_t row = choice_row(expert, slot, offsets, n * k + j);
      if (row < 0) continue;
      float v[VEC];
      load_vec<VEC>(rows + row * d + i, v);
      const float g = kWeighted ? gate[n * k + j] : 1.0f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] += kWeighted ? g * v[e] : v[e];
    }
    store_vec<VEC>(out + n * d + i, acc);
  }
}

template <class T, int VEC>
__global__ void combine_backward_kernel(const T* dout, const T* y, const std::int32_t* expert,
                                        const std::int32_t* slot, const std::int32_t* offsets, const float* gate,
                                        T* dy, float* dgate, int k, int d) {
  __shared__ float scratch[32];
  const std::int64_t c = blockIdx.x;
  const std::int64_t row = choice_row(expert, slot, offsets, c);
  if (row < 0) {
    if (threadIdx.x == 0) dgate[c] = 0.0f;
    return;
  }
  const T* dor = dout + (c / k) * d;
  const float g = gate[c];
  float dot = 0.0f;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    float go[VEC], yv[VEC], out[VEC];
    load_vec<VEC>(dor + i, go);
    load_vec<VEC>(y + row * d + i, yv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      dot += go[e] * yv[e];
      out[e] = g * go[e];
    }
    store_vec<VEC>(dy + row * d + i, out);
  }
  dot = block_sum(dot, scratch);
  if (threadIdx.x == 0) dgate[c] = dot;
}

// Block (p, l) = blockIdx.x moves its rows between source-major and expert-major positions;
// blockIdx.y strides over the block's rows. Each CTA finds both start rows by summing the block
// sizes (P x L is small): counts, or uniform_rows each when counts is null. Rows move as 16-byte
// words when the row width and the buffers allow, else 4- or 2-byte words.
template <class Word>
__global__ void regroup_kernel(const Word* in, const std::int32_t* counts, std::int64_t uniform_rows, Word* out,
                               int peers, int locals, std::int64_t row_words, bool to_expert_major) {
  const int b = blockIdx.x, p = b / locals, l = b % locals;
  auto count = [&](int q) { return counts ? std::int64_t(counts[q]) : uniform_rows; };
  std::int64_t source_major = 0, expert_major = 0;
  for (int q = 0; q < peers * locals; ++q) {
    const int qp = q / locals, ql = q % locals;
    if (q < b) source_major += count(q);
    if (ql < l || (ql == l && qp < p)) expert_major += count(q);
  }
  const std::int64_t from = to_expert_major ? source_major : expert_major;
  const std::int64_t to = to_expert_major ? expert_major : source_major;
  const std::int64_t rows = count(b);
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Word* src = in + (from + r) * row_words;
    Word* dst = out + (to + r) * row_words;
    for (std::int64_t w = threadIdx.x; w < row_words; w += blockDim.x) dst[w] = src[w];
  }
}

const std::int32_t* i32(const Tensor& t) { return static_cast<const std::int32_t*>(t.data()); }

// Whether rows of width d in these tensors can move as 16-byte vectors of 8 elements.
bool rows_vectorizable(std::int64_t d, std::initializer_list<const Tensor*> tensors) {
  if (d % 8 != 0) return false;
  for (const Tensor* t : tensors)
    if (reinterpret_cast<std::uintptr_t>(t->data()) % 16 != 0) return false;
  return true;
}

}  // namespace

void moe_expert_offsets(const Tensor& counts, std::int64_t capacity, const Tensor& offsets, StreamRef stream) {
  expert_offsets_kernel<<<1, 1, 0, to_cuda(stream)>>>(i32(counts), int(counts.numel()), capacity,
                                                      static_cast<std::int32_t*>(offsets.data()));
  SY_CUDA_LAUNCH();
}

void moe_scatter_rows(const Tensor& x, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                      const Tensor& send, StreamRef stream) {
  const std::int64_t choices = expert.numel();
  if (choices == 0) return;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    auto launch = [&](auto kernel) {
      kernel<<<unsigned(choices), kRowThreads, 0, to_cuda(stream)>>>(static_cast<const T*>(x.data()), i32(expert),
                                                                    i32(slot), i32(offsets),
                                                                    static_cast<T*>(send.data()), int(expert.size(1)),
                                                                    int(x.size(1)));
    };
    if (rows_vectorizable(x.size(1), {&x, &send})) launch(scatter_kernel<T, 8>);
    else launch(scatter_kernel<T, 1>);
  });
  SY_CUDA_LAUNCH();
}

void moe_gather_rows_sum(const Tensor& rows, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                         const Tensor& dx, StreamRef stream) {
  if (dx.size(0) == 0) return;
  dispatch_float(dx, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    auto launch = [&](auto kernel) {
      kernel<<<unsigned(dx.size(0)), kRowThreads, 0, to_cuda(stream)>>>(
          static_cast<const T*>(rows.data()), i32(expert), i32(slot), i32(offsets), nullptr,
          static_cast<T*>(dx.data()), int(expert.size(1)), int(dx.size(1)));
    };
    if (rows_vectorizable(dx.size(1), {&rows, &dx})) launch(gather_kernel<T, 8, false>);
    else launch(gather_kernel<T, 1, false>);
  });
  SY_CUDA_LAUNCH();
}

void moe_combine(const Tensor& y, const Tensor& expert, const Tensor& slot, const Tensor& offsets, const Tensor& gate,
                 const Tensor& out, StreamRef stream) {
  if (out.size(0) == 0) return;
  dispatch_float(out, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    auto launch = [&](auto kernel) {
      kernel<<<unsigned(out.size(0)), kRowThreads, 0, to_cuda(stream)>>>(
          static_cast<const T*>(y.data()), i32(expert), i32(slot), i32(offsets), gate.ptr<float>(),
          static_cast<T*>(out.data()), int(expert.size(1)), int(out.size(1)));
    };
    if (rows_vectorizable(out.size(1), {&y, &out})) launch(gather_kernel<T, 8, true>);
    else launch(gather_kernel<T, 1, true>);
  });
  SY_CUDA_LAUNCH();
}

void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& expert, const Tensor& slot,
                          const Tensor& offsets, const Tensor& gate, const Tensor& dy, const Tensor& dgate,
                          StreamRef stream) {
  const std::int64_t choices = expert.numel();
  if (choices == 0) return;
  dispatch_float(dout, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    auto launch = [&](auto kernel) {
      kernel<<<unsigned(choices), kRowThreads, 0, to_cuda(stream)>>>(
          static_cast<const T*>(dout.data()), static_cast<const T*>(y.data()), i32(expert), i32(slot), i32(offsets),
          gate.ptr<float>(), static_cast<T*>(dy.data()), dgate.ptr<float>(), int(expert.size(1)), int(dout.size(1)));
    };
    if (rows_vectorizable(dout.size(1), {&dout, &y, &dy})) launch(combine_backward_kernel<T, 8>);
    else launch(combine_backward_kernel<T, 1>);
  });
  SY_CUDA_LAUNCH();
}

void moe_regroup(const Tensor& in, int peers, int locals, const std::int32_t* counts, std::int64_t uniform_rows,
                 const Tensor& out, bool to_expert_major, StreamRef stream) {
  if (peers * locals == 0) return;
  const std::int64_t row_bytes = in.size(1) * std::int64_t(dtype_size(in.dtype()));
  // At least 8 CTAs per SM over all blocks. With 4-byte words and 64 CTAs per block, the K = 1
  // exchange of 2 x 4 blocks (30 MiB) took 0.58 ms per layer against 0.45 for the 4-block
  // exchange on 2 H200s, while with 2 x 8 blocks (twice the CTAs) it won: the regroup pass, not
  // the all-to-all, is the likely difference (inferred; not timed on its own).
  const int sms = current_device_facts().sms;
  const unsigned per_block = unsigned(std::max(64, (8 * sms + peers * locals - 1) / (peers * locals)));
  const dim3 grid(unsigned(peers * locals), std::min(per_block, 65535u));
  auto launch = [&](auto word) {
    using Word = decltype(word);
    regroup_kernel<Word><<<grid, kRowThreads, 0, to_cuda(stream)>>>(
        static_cast<const Word*>(in.data()), counts, uniform_rows, static_cast<Word*>(out.data()), peers, locals,
        row_bytes / std::int64_t(sizeof(Word)), to_expert_major);
  };
  const bool aligned16 = reinterpret_cast<std::uintptr_t>(in.data()) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(out.data()) % 16 == 0;
  if (row_bytes % 16 == 0 && aligned16) {
    launch(uint4{});
  } else if (row_bytes % 4 == 0) {
    launch(std::uint32_t{});
  } else {
    launch(std::uint16_t{});
  }
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
