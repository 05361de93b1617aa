// Head layouts on CUDA: token-major rows [B*T, ..., H*D, ...] <-> head-major [B, H, T, D]. Pure
// copies, one kernel for both directions and all four ops.
#include <cstdint>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

// Copies head rows between token-major rows (head h of token (b, t) at words col_offset + h*D ..
// +D of row b*T + t, row_words per row) and head-major [B, H, T, D], D counted in words.
// Traffic: 2 x numel x sizeof(T) bytes, every element read once and written once. Thread i
// handles word i of the head-major side, so that side is fully coalesced; on the token-major side
// a head row's D words are contiguous, so a warp touches a few whole segments. Word is a 16-byte
// vector when every head row is 16-byte aligned, else the element's bits (f64 as two 4-byte
// words): the copy never looks at values.
template <class Word>
__global__ void copy_heads_kernel(Word* token_major, std::int64_t row_words, std::int64_t col_offset_words,
                                  Word* head_major, std::int64_t heads, std::int64_t seq, std::int64_t head_words,
                                  std::int64_t n, bool to_heads) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const std::int64_t row = i / head_words, d = i - row * head_words;
    const std::int64_t t = row % seq, bh = row / seq;
    const std::int64_t h = bh % heads, b = bh / heads;
    const std::int64_t token_index = (b * seq + t) * row_words + col_offset_words + h * head_words + d;
    if (to_heads) {
      head_major[i] = token_major[token_index];
    } else {
      token_major[token_index] = head_major[i];
    }
  }
}

template <class Word>
void launch_copy_heads(const Tensor& token_major, std::int64_t col_offset, const Tensor& head_major, bool to_heads,
                       StreamRef stream) {
  // Every count passed here is a multiple of D, so it converts to whole words.
  const auto in_words = [&](std::int64_t elements) {
    return elements * std::int64_t(dtype_size(head_major.dtype())) / std::int64_t(sizeof(Word));
  };
  const std::int64_t n = in_words(head_major.numel());
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  copy_heads_kernel<Word><<<unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), kBlock, 0, to_cuda(stream)>>>(
      static_cast<Word*>(token_major.data()), in_words(token_major.size(1)), in_words(col_offset),
      static_cast<Word*>(head_major.data()), head_major.size(1), head_major.size(2), in_words(head_major.size(3)), n,
      to_heads);
  SY_CUDA_LAUNCH();
}

bool aligned_16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void copy_heads(const Tensor& token_major, std::int64_t col_offset, const Tensor& head_major, bool to_heads,
                StreamRef stream) {
  if (head_major.numel() == 0) return;
  const std::size_t head_row_bytes = std::size_t(head_major.size(3)) * dtype_size(head_major.dtype());
  // Row width and column offset are multiples of D, so aligned bases and head rows keep every
  // head row of both sides 16-byte aligned.
  if (head_row_bytes % 16 == 0 && aligned_16(token_major.data()) && aligned_16(head_major.data())) {
    launch_copy_heads<uint4>(token_major, col_offset, head_major, to_heads, stream);
  } else if (dtype_size(head_major.dtype()) == 2) {
    launch_copy_heads<std::uint16_t>(token_major, col_offset, head_major, to_heads, stream);
  } else {
    launch_copy_heads<std::uint32_t>(token_major, col_offset, head_major, to_heads, stream);
  }
}

void copy_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, bool to_heads,
              StreamRef stream) {
  const std::int64_t q_columns = q.size(1) * q.size(3), kv_columns = k.size(1) * k.size(3);
  copy_heads(qkv, 0, q, to_heads, stream);
  copy_heads(qkv, q_columns, k, to_heads, stream);
  copy_heads(qkv, q_columns + kv_columns, v, to_heads, stream);
}

}  // namespace

void split_qkv_heads(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, StreamRef stream) {
  copy_qkv(qkv, q, k, v, true, stream);
}

void merge_qkv_heads(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dqkv, StreamRef stream) {
  copy_qkv(dqkv, dq, dk, dv, false, stream);
}

void merge_heads(const Tensor& x, const Tensor& y, StreamRef stream) { copy_heads(y, 0, x, false, stream); }

void split_heads(const Tensor& dy, const Tensor& dx, StreamRef stream) { copy_heads(dy, 0, dx, true, stream); }

}  // namespace sy::cuda
