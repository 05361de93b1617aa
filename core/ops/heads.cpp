// Head layouts around core attention: argument checks, dispatch, and the CPU reference. The
// linear layers see token-major rows [B*T, H*D]; attention wants head-major [B, H, T, D]. Every
// op here is a pure copy of D-element head rows, so one routine serves both directions.
#include <cstring>

#include "core/ops.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// Copies head rows between token-major rows (head h of token (b, t) at columns col_offset +
// h*D .. +D) and head-major [B, H, T, D]. Bytewise, so it serves every dtype.
void copy_heads_cpu(const Tensor& token_major, std::int64_t col_offset, const Tensor& head_major, bool to_heads) {
  const std::int64_t batch = head_major.size(0), heads = head_major.size(1), seq = head_major.size(2);
  const std::int64_t head_dim = head_major.size(3), row_width = token_major.size(1);
  const std::size_t element_bytes = dtype_size(head_major.dtype());
  const std::size_t head_row_bytes = std::size_t(head_dim) * element_bytes;
  auto* tokens = static_cast<unsigned char*>(token_major.data());
  auto* rows = static_cast<unsigned char*>(head_major.data());
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t t = 0; t < seq; ++t) {
        const std::int64_t token_index = (b * seq + t) * row_width + col_offset + h * head_dim;
        const std::int64_t head_index = ((b * heads + h) * seq + t) * head_dim;
        unsigned char* token_row = tokens + std::size_t(token_index) * element_bytes;
        unsigned char* head_row = rows + std::size_t(head_index) * element_bytes;
        if (to_heads) {
          std::memcpy(head_row, token_row, head_row_bytes);
        } else {
          std::memcpy(token_row, head_row, head_row_bytes);
        }
      }
    }
  }
}

void check_head_major(const char* op, const char* name, const Tensor& t) {
  check_contiguous(op, name, t);
  check_float(op, name, t);
  SY_CHECK(t.dim() == 4) << op << ": " << name << " must be [B, H, T, D], got " << t.describe();
}

// q [B, Hq, T, D], k and v [B, Hkv, T, D] (shape taken from q and k), qkv [B*T, (Hq + 2 Hkv) * D].
void check_qkv_args(const char* op, const char* qkv_name, const Tensor& qkv, const char* q_name, const Tensor& q,
                    const char* k_name, const Tensor& k, const char* v_name, const Tensor& v) {
  check_head_major(op, q_name, q);
  check_head_major(op, k_name, k);
  const std::int64_t batch = q.size(0), q_heads = q.size(1), seq = q.size(2), head_dim = q.size(3);
  const std::int64_t kv_heads = k.size(1);
  check_shape(op, k_name, k, {batch, kv_heads, seq, head_dim});
  check_contiguous(op, v_name, v);
  check_shape(op, v_name, v, k.shape());
  check_contiguous(op, qkv_name, qkv);
  SY_CHECK(qkv.dim() == 2) << op << ": " << qkv_name << " must be [B*T, (Hq + 2 Hkv) * D], got " << qkv.describe();
  SY_CHECK(qkv.size(0) == batch * seq) << op << ": " << qkv_name << " has " << qkv.size(0)
                                       << " rows, expected B x T = " << batch * seq;
  SY_CHECK(qkv.size(1) == (q_heads + 2 * kv_heads) * head_dim)
      << op << ": " << qkv_name << " has " << qkv.size(1) << " columns, expected (Hq + 2 Hkv) x D = "
      << (q_heads + 2 * kv_heads) * head_dim;
  check_dtype(op, k_name, k, q.dtype());
  check_dtype(op, v_name, v, q.dtype());
  check_dtype(op, qkv_name, qkv, q.dtype());
  check_same_device(op, {&qkv, &q, &k, &v});
}

// x [B, H, T, D] and y [B*T, H*D] (shape taken from x).
void check_merged_args(const char* op, const char* heads_name, const Tensor& x, const char* tokens_name,
                       const Tensor& y) {
  check_head_major(op, heads_name, x);
  check_contiguous(op, tokens_name, y);
  check_shape(op, tokens_name, y, {x.size(0) * x.size(2), x.size(1) * x.size(3)});
  check_dtype(op, tokens_name, y, x.dtype());
  check_same_device(op, {&x, &y});
}

void copy_qkv_cpu(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, bool to_heads) {
  const std::int64_t q_columns = q.size(1) * q.size(3), kv_columns = k.size(1) * k.size(3);
  copy_heads_cpu(qkv, 0, q, to_heads);
  copy_heads_cpu(qkv, q_columns, k, to_heads);
  copy_heads_cpu(qkv, q_columns + kv_columns, v, to_heads);
}

}  // namespace

void split_qkv_heads(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, StreamRef stream) {
  check_qkv_args("split_qkv_heads", "qkv", qkv, "q", q, "k", k, "v", v);
  if (qkv.is_cuda()) {
    SY_ON_CUDA(cuda::split_qkv_heads(qkv, q, k, v, stream));
    return;
  }
  copy_qkv_cpu(qkv, q, k, v, true);
}

void merge_qkv_heads(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dqkv, StreamRef stream) {
  check_qkv_args("merge_qkv_heads", "dqkv", dqkv, "dq", dq, "dk", dk, "dv", dv);
  if (dqkv.is_cuda()) {
    SY_ON_CUDA(cuda::merge_qkv_heads(dq, dk, dv, dqkv, stream));
    return;
  }
  copy_qkv_cpu(dqkv, dq, dk, dv, false);
}

void merge_heads(const Tensor& x, const Tensor& y, StreamRef stream) {
  check_merged_args("merge_heads", "x", x, "y", y);
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::merge_heads(x, y, stream));
    return;
  }
  copy_heads_cpu(y, 0, x, false);
}

void split_heads(const Tensor& dy, const Tensor& dx, StreamRef stream) {
  check_merged_args("split_heads", "dx", dx, "dy", dy);
  if (dy.is_cuda()) {
    SY_ON_CUDA(cuda::split_heads(dy, dx, stream));
    return;
  }
  copy_heads_cpu(dy, 0, dx, true);
}

}  // namespace sy
