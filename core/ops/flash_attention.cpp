// Flash attention (causal MHA / GQA / MQA without a saved [T, T] matrix): argument checks,
// dispatch, and the CPU reference, forward then backward. The reference is plain loops in
// double; the backward recomputes each row's probabilities from the saved log-sum-exp exactly
// as the CUDA kernels do.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

struct Dims {
  std::int64_t batch, heads, kv_heads, seq, head_dim;
  std::int64_t group() const { return heads / kv_heads; }
};

// Row (b, h, t) of a [B, H, T, D] view whose last axis is contiguous; the other axes may have
// any strides (e.g. heads viewed in place inside a token-major [B*T, H*D] matrix).
template <class T>
T* row_of(const Tensor& x, std::int64_t b, std::int64_t h, std::int64_t t) {
  return x.ptr<T>() + b * x.stride(0) + h * x.stride(1) + t * x.stride(2);
}

// Scores scale * q_row . k[j] for j <= t of one query row, into `s`; returns their maximum.
template <class T>
double row_scores(const T* q_row, const Tensor& k, std::int64_t b, std::int64_t kv_head, std::int64_t t,
                  std::int64_t dim, double scale, std::vector<double>& s) {
  double row_max = -INFINITY;
  for (std::int64_t j = 0; j <= t; ++j) {
    const T* k_row = row_of<T>(k, b, kv_head, j);
    double dot = 0;
    for (std::int64_t c = 0; c < dim; ++c) dot += to_double(q_row[c]) * to_double(k_row[c]);
    s[std::size_t(j)] = dot * scale;
    row_max = std::max(row_max, s[std::size_t(j)]);
  }
  return row_max;
}

// Calls fn(b, h, kv_head, t, row) for every query row; `row` indexes the contiguous [B, Hq, T]
// row statistics (lse).
template <class Fn>
void for_each_query_row(const Dims& d, Fn&& fn) {
  for (std::int64_t b = 0; b < d.batch; ++b)
    for (std::int64_t h = 0; h < d.heads; ++h)
      for (std::int64_t t = 0; t < d.seq; ++t) fn(b, h, h / d.group(), t, (b * d.heads + h) * d.seq + t);
}

template <class T>
void forward_cpu(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& lse) {
  const std::int64_t seq = d.seq, dim = d.head_dim;
  const double scale = 1.0 / std::sqrt(double(dim));
  std::vector<double> s(static_cast<std::size_t>(seq)), o(static_cast<std::size_t>(dim));
  for_each_query_row(d, [&](std::int64_t b, std::int64_t h, std::int64_t kvh, std::int64_t t, std::int64_t row) {
    const double row_max = row_scores(row_of<T>(q, b, h, t), k, b, kvh, t, dim, scale, s);
    double sum = 0;
    for (std::int64_t j = 0; j <= t; ++j) sum += s[std::size_t(j)] = std::exp(s[std::size_t(j)] - row_max);
    std::fill(o.begin(), o.end(), 0.0);
    for (std::int64_t j = 0; j <= t; ++j) {
      const T* v_row = row_of<T>(v, b, kvh, j);
      for (std::int64_t c = 0; c < dim; ++c) o[std::size_t(c)] += s[std::size_t(j)] * to_double(v_row[c]);
    }
    T* out_row = row_of<T>(out, b, h, t);
    for (std::int64_t c = 0; c < dim; ++c) out_row[c] = from_double<T>(o[std::size_t(c)] / sum);
    lse.ptr<float>()[row] = float(row_max + std::log(sum));
  });
}

// P = exp(S - lse), dP = dO V^T, delta = rowsum(dO * O), dS = P (dP - delta); dq = scale dS K,
// dk = scale dS^T Q and dv = P^T dO, dk and dv summed over the query heads of their kv head.
template <class T>
void backward_cpu(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  const std::int64_t seq = d.seq, dim = d.head_dim;
  const double scale = 1.0 / std::sqrt(double(dim));
  // dk, dv accumulate in double over [B, Hkv, T, D], contiguous, and are written at the end.
  const std::size_t kv_elements = std::size_t(d.batch * d.kv_heads * seq * dim);
  std::vector<double> dk_acc(kv_elements, 0.0), dv_acc(kv_elements, 0.0);
  auto acc_row = [&](std::int64_t b, std::int64_t kvh, std::int64_t j) {
    return std::size_t(((b * d.kv_heads + kvh) * seq + j) * dim);
  };
  std::vector<double> s(static_cast<std::size_t>(seq)), dq_row(static_cast<std::size_t>(dim));
  for_each_query_row(d, [&](std::int64_t b, std::int64_t h, std::int64_t kvh, std::int64_t t, std::int64_t row) {
    const T* q_row = row_of<T>(q, b, h, t);
    const T* do_row = row_of<T>(dout, b, h, t);
    const T* o_row = row_of<T>(out, b, h, t);
    row_scores(q_row, k, b, kvh, t, dim, scale, s);
    const double row_lse = lse.ptr<float>()[row];
    double delta = 0;
    for (std::int64_t c = 0; c < dim; ++c) delta += to_double(do_row[c]) * to_double(o_row[c]);
    std::fill(dq_row.begin(), dq_row.end(), 0.0);
    for (std::int64_t j = 0; j <= t; ++j) {
      const T* k_row = row_of<T>(k, b, kvh, j);
      const T* v_row = row_of<T>(v, b, kvh, j);
      const double p = std::exp(s[std::size_t(j)] - row_lse);
      double dp = 0;
      for (std::int64_t c = 0; c < dim; ++c) dp += to_double(do_row[c]) * to_double(v_row[c]);
      const double ds = p * (dp - delta) * scale;
      const std::size_t acc = acc_row(b, kvh, j);
      for (std::int64_t c = 0; c < dim; ++c) {
        dq_row[std::size_t(c)] += ds * to_double(k_row[c]);
        dk_acc[acc + std::size_t(c)] += ds * to_double(q_row[c]);
        dv_acc[acc + std::size_t(c)] += p * to_double(do_row[c]);
      }
    }
    T* dq_out = row_of<T>(dq, b, h, t);
    for (std::int64_t c = 0; c < dim; ++c) dq_out[c] = from_double<T>(dq_row[std::size_t(c)]);
  });
  for (std::int64_t b = 0; b < d.batch; ++b)
    for (std::int64_t kvh = 0; kvh < d.kv_heads; ++kvh)
      for (std::int64_t j = 0; j < seq; ++j) {
        T* dk_out = row_of<T>(dk, b, kvh, j);
        T* dv_out = row_of<T>(dv, b, kvh, j);
        const std::size_t acc = acc_row(b, kvh, j);
        for (std::int64_t c = 0; c < dim; ++c) {
          dk_out[c] = from_double<T>(dk_acc[acc + std::size_t(c)]);
          dv_out[c] = from_double<T>(dv_acc[acc + std::size_t(c)]);
        }
      }
}

// q, k, v, out, dout, dq, dk, dv are [B, H, T, D] views: the last axis contiguous, the others
// any stride (checked here). lse and scratch are contiguous.
void check_head_view(const char* op, const char* name, const Tensor& t) {
  SY_CHECK(t.dim() == 4) << op << ": " << name << " must be [B, H, T, D], got " << t.describe();
  SY_CHECK(t.stride(3) == 1) << op << ": " << name << " must have a contiguous last axis (head dim), got "
                             << t.describe() << " with stride " << t.stride(3);
  if (t.is_cuda()) {
    // 16-byte rows: cp.async and the 4-byte stores of the kernels need aligned row starts.
    const bool aligned = reinterpret_cast<std::uintptr_t>(t.data()) % 16 == 0 && t.stride(0) % 8 == 0 &&
                         t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
    SY_CHECK(aligned) << op << ": CUDA " << name << " must start 16-byte aligned with strides that are multiples of 8 "
                      << "elements, got " << t.describe() << " with strides (" << t.stride(0) << ", " << t.stride(1)
                      << ", " << t.stride(2) << ", 1)";
  }
}

// Checks q, k, v, lse and the q-shaped and k-shaped extras; returns the dims.
Dims check_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                std::initializer_list<std::pair<const char*, const Tensor*>> like_q,
                std::initializer_list<std::pair<const char*, const Tensor*>> like_k) {
  check_float(op, "q", q);
  SY_CHECK(q.dim() == 4) << op << ": q must be [B, Hq, T, D], got " << q.describe();
  SY_CHECK(k.dim() == 4) << op << ": k must be [B, Hkv, T, D], got " << k.describe();
  const Dims d{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
  SY_CHECK(d.head_dim > 0) << op << ": q must have a head dimension D > 0, got " << q.describe();
  SY_CHECK(d.kv_heads > 0 && d.heads % d.kv_heads == 0)
      << op << ": n_heads " << d.heads << " is not a multiple of n_kv_heads " << d.kv_heads << " (q " << q.describe()
      << ", k " << k.describe() << ")";
  check_head_view(op, "q", q);
  check_head_view(op, "k", k);
  check_head_view(op, "v", v);
  check_shape(op, "k", k, {d.batch, d.kv_heads, d.seq, d.head_dim});
  check_shape(op, "v", v, k.shape());
  check_dtype(op, "k", k, q.dtype());
  check_dtype(op, "v", v, q.dtype());
  for (const auto& [name, t] : like_q) {
    check_head_view(op, name, *t);
    check_shape(op, name, *t, q.shape());
    check_dtype(op, name, *t, q.dtype());
  }
  for (const auto& [name, t] : like_k) {
    check_head_view(op, name, *t);
    check_shape(op, name, *t, k.shape());
    check_dtype(op, name, *t, q.dtype());
  }
  check_contiguous(op, "lse", lse);
  check_shape(op, "lse", lse, {d.batch, d.heads, d.seq});
  check_dtype(op, "lse", lse, DType::f32);
  if (q.is_cuda()) {
    SY_CHECK(flash_attention_supported(q))
        << op << ": the CUDA kernels take bf16 with head dim 64 or 128, got q " << q.describe();
  }
  return d;
}

}  // namespace

bool flash_attention_supported(Device device, DType dtype, std::int64_t head_dim) {
  const bool float_dtype = dtype == DType::f32 || dtype == DType::f64 || dtype == DType::bf16;
  if (device == Device::cpu) return float_dtype;
#ifdef SY_WITH_CUDA
  return dtype == DType::bf16 && cuda::flash_attention_head_dim_supported(head_dim);
#else
  return false;
#endif
}

bool flash_attention_supported(const Tensor& q) {
  return q.dim() == 4 && flash_attention_supported(q.device(), q.dtype(), q.size(3));
}

Shape flash_attention_scratch_shape(const Tensor& q) {
  SY_CHECK(q.dim() == 4) << "flash_attention_scratch_shape: q must be [B, Hq, T, D], got " << q.describe();
  if (q.is_cuda()) {
    std::int64_t floats = 0;
    SY_ON_CUDA(floats = cuda::flash_attention_scratch_floats(q.size(0), q.size(1), q.size(2)));
    return {floats};
  }
  return {q.size(0) * q.size(1) * q.size(2)};  // the reference's rows (it keeps delta in double itself)
}

void flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                             StreamRef stream) {
  const char* op = "flash_attention_forward";
  const Dims d = check_args(op, q, k, v, lse, {{"out", &out}}, {});
  check_same_device(op, {&q, &k, &v, &out, &lse});
  if (q.is_cuda()) {
    SY_ON_CUDA(cuda::flash_attention_forward(q, k, v, out, lse, stream));
    return;
  }
  cpu::dispatch_float(q, [&](auto* type) { forward_cpu<std::remove_pointer_t<decltype(type)>>(d, q, k, v, out, lse); });
}

bool flash_attention_wgmma_supported(const Tensor& q) {
#ifdef SY_WITH_CUDA
  return q.dim() == 4 && q.is_cuda() && q.dtype() == DType::bf16 && cuda::flash_attention_wgmma_supported(q.size(3));
#else
  (void)q;
  return false;
#endif
}

void flash_attention_forward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                   const Tensor& lse, StreamRef stream) {
  const char* op = "flash_attention_forward_wgmma";
  check_args(op, q, k, v, lse, {{"out", &out}}, {});
  check_same_device(op, {&q, &k, &v, &out, &lse});
  SY_CHECK(flash_attention_wgmma_supported(q))
      << op << ": needs bf16 with head dim 64 on an sm_90 GPU, got q " << q.describe();
  SY_ON_CUDA(cuda::flash_attention_forward_wgmma(q, k, v, out, lse, stream));
}

namespace {
// The backward's checks: dims, the scratch's shape, one device.
Dims check_backward_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                         const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                         const Tensor& scratch) {
  const Dims d = check_args(op, q, k, v, lse, {{"out", &out}, {"dout", &dout}, {"dq", &dq}}, {{"dk", &dk}, {"dv", &dv}});
  check_contiguous(op, "scratch", scratch);
  check_shape(op, "scratch", scratch, flash_attention_scratch_shape(q));
  check_dtype(op, "scratch", scratch, DType::f32);
  check_same_device(op, {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv, &scratch});
  return d;
}
}  // namespace

void flash_attention_backward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv, const Tensor& scratch, StreamRef stream) {
  const char* op = "flash_attention_backward_wgmma";
  check_backward_args(op, q, k, v, out, lse, dout, dq, dk, dv, scratch);
  SY_CHECK(flash_attention_wgmma_supported(q))
      << op << ": needs bf16 with head dim 64 on an sm_90 GPU, got q " << q.describe();
  SY_ON_CUDA(cuda::flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, scratch, true, stream));
}

void flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                              const Tensor& dv, const Tensor& scratch, StreamRef stream) {
  const Dims d = check_backward_args("flash_attention_backward", q, k, v, out, lse, dout, dq, dk, dv, scratch);
  if (q.is_cuda()) {
    SY_ON_CUDA(cuda::flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, scratch, false, stream));
    return;
  }
  // The reference computes each row's delta in double where it is used; the scratch stays unused.
  cpu::dispatch_float(q, [&](auto* type) {
    backward_cpu<std::remove_pointer_t<decltype(type)>>(d, q, k, v, out, lse, dout, dq, dk, dv);
  });
}

}  // namespace sy
