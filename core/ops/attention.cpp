// Causal attention (MHA / GQA / MQA): argument checks, dispatch, and the CPU reference (forward
// then backward). The reference is plain loops over (batch, head, query) in double.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

struct AttentionDims {
  std::int64_t batch, heads, kv_heads, seq, head_dim;
  std::int64_t group() const { return heads / kv_heads; }  // query heads per kv head
};

AttentionDims dims_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
}

// q: [B, Hq, T, D]; k, v: [B, Hkv, T, D]; probs: [B, Hq, T, T]. probs[b, h, t, j] is the
// softmax over j <= t of scale * q[b, h, t] . k[b, h / g, j], and exactly 0 for j > t.
template <class T>
void attention_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& probs) {
  const AttentionDims d = dims_of(q, k);
  const std::int64_t seq = d.seq, dim = d.head_dim;
  const double scale = 1.0 / std::sqrt(double(dim));
  const T* qp = q.ptr<T>();
  const T* kp = k.ptr<T>();
  const T* vp = v.ptr<T>();
  T* op = out.ptr<T>();
  T* pp = probs.ptr<T>();
  std::vector<double> p(std::size_t(seq), 0.0), o(std::size_t(dim), 0.0);
  for (std::int64_t b = 0; b < d.batch; ++b) {
    for (std::int64_t h = 0; h < d.heads; ++h) {
      const std::int64_t kv = b * d.kv_heads + h / d.group();
      const T* qh = qp + (b * d.heads + h) * seq * dim;
      const T* kh = kp + kv * seq * dim;
      const T* vh = vp + kv * seq * dim;
      for (std::int64_t t = 0; t < seq; ++t) {
        double row_max = -INFINITY;
        for (std::int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (std::int64_t c = 0; c < dim; ++c) dot += to_double(qh[t * dim + c]) * to_double(kh[j * dim + c]);
          p[std::size_t(j)] = dot * scale;
          row_max = std::max(row_max, p[std::size_t(j)]);
        }
        double sum = 0;
        for (std::int64_t j = 0; j <= t; ++j) sum += p[std::size_t(j)] = std::exp(p[std::size_t(j)] - row_max);
        std::fill(o.begin(), o.end(), 0.0);
        T* prow = pp + ((b * d.heads + h) * seq + t) * seq;
        for (std::int64_t j = 0; j < seq; ++j) {
          if (j > t) {
            prow[j] = from_double<T>(0.0);
            continue;
          }
          const double pj = p[std::size_t(j)] / sum;
          prow[j] = from_double<T>(pj);
          for (std::int64_t c = 0; c < dim; ++c) o[std::size_t(c)] += pj * to_double(vh[j * dim + c]);
        }
        for (std::int64_t c = 0; c < dim; ++c)
          op[((b * d.heads + h) * seq + t) * dim + c] = from_double<T>(o[std::size_t(c)]);
      }
    }
  }
}

// With P the saved probs and dP = dout V^T: dS = P * (dP - rowsum(dP * P)) (softmax backward),
// dq = scale * dS K, dk = scale * dS^T Q and dv = P^T dout, where dk and dv sum over the g query
// heads that share a kv head (accumulated in double, written once).
template <class T>
void attention_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                            const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  const AttentionDims d = dims_of(q, k);
  const std::int64_t seq = d.seq, dim = d.head_dim;
  const double scale = 1.0 / std::sqrt(double(dim));
  const T* qp = q.ptr<T>();
  const T* kp = k.ptr<T>();
  const T* vp = v.ptr<T>();
  const T* pp = probs.ptr<T>();
  const T* dop = dout.ptr<T>();
  T* dqp = dq.ptr<T>();
  std::vector<double> dk_acc(std::size_t(k.numel()), 0.0), dv_acc(std::size_t(v.numel()), 0.0);
  std::vector<double> ds(std::size_t(seq), 0.0), dq_row(std::size_t(dim), 0.0);
  for (std::int64_t b = 0; b < d.batch; ++b) {
    for (std::int64_t h = 0; h < d.heads; ++h) {
      const std::int64_t kv = b * d.kv_heads + h / d.group();
      const std::int64_t qh = (b * d.heads + h) * seq;  // first row of this head in q, dout, probs
      const T* kh = kp + kv * seq * dim;
      const T* vh = vp + kv * seq * dim;
      double* dkh = dk_acc.data() + kv * seq * dim;
      double* dvh = dv_acc.data() + kv * seq * dim;
      for (std::int64_t t = 0; t < seq; ++t) {
        const T* prow = pp + (qh + t) * seq;
        const T* do_row = dop + (qh + t) * dim;
        const T* q_row = qp + (qh + t) * dim;
        double row_dot = 0;
        for (std::int64_t j = 0; j <= t; ++j) {
          double dp = 0;
          for (std::int64_t c = 0; c < dim; ++c) dp += to_double(do_row[c]) * to_double(vh[j * dim + c]);
          ds[std::size_t(j)] = dp;
          row_dot += dp * to_double(prow[j]);
        }
        std::fill(dq_row.begin(), dq_row.end(), 0.0);
        for (std::int64_t j = 0; j <= t; ++j) {
          const double pj = to_double(prow[j]);
          const double dsj = pj * (ds[std::size_t(j)] - row_dot) * scale;
          for (std::int64_t c = 0; c < dim; ++c) {
            dq_row[std::size_t(c)] += dsj * to_double(kh[j * dim + c]);
            dkh[j * dim + c] += dsj * to_double(q_row[c]);
            dvh[j * dim + c] += pj * to_double(do_row[c]);
          }
        }
        for (std::int64_t c = 0; c < dim; ++c) dqp[(qh + t) * dim + c] = from_double<T>(dq_row[std::size_t(c)]);
      }
    }
  }
  T* dkp = dk.ptr<T>();
  T* dvp = dv.ptr<T>();
  for (std::size_t i = 0; i < dk_acc.size(); ++i) {
    dkp[i] = from_double<T>(dk_acc[i]);
    dvp[i] = from_double<T>(dv_acc[i]);
  }
}

// Checks q, k, v (and probs) and returns the dims; every tensor contiguous and of q's dtype.
AttentionDims check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& probs) {
  check_contiguous(op, "q", q);
  check_contiguous(op, "k", k);
  check_contiguous(op, "v", v);
  check_contiguous(op, "probs", probs);
  check_float(op, "q", q);
  SY_CHECK(q.dim() == 4) << op << ": q must be [B, Hq, T, D], got " << q.describe();
  SY_CHECK(k.dim() == 4) << op << ": k must be [B, Hkv, T, D], got " << k.describe();
  SY_CHECK(q.size(3) > 0) << op << ": q must have a head dimension D > 0, got " << q.describe();
  const AttentionDims d = dims_of(q, k);
  SY_CHECK(d.kv_heads > 0 && d.heads % d.kv_heads == 0)
      << op << ": n_heads " << d.heads << " is not a multiple of n_kv_heads " << d.kv_heads << " (q " << q.describe()
      << ", k " << k.describe() << ")";
  check_shape(op, "k", k, {d.batch, d.kv_heads, d.seq, d.head_dim});
  check_shape(op, "v", v, k.shape());
  check_shape(op, "probs", probs, {d.batch, d.heads, d.seq, d.seq});
  check_dtype(op, "k", k, q.dtype());
  check_dtype(op, "v", v, q.dtype());
  check_dtype(op, "probs", probs, q.dtype());
  return d;
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& probs,
                       StreamRef stream) {
  const char* op = "attention_forward";
  check_attention_args(op, q, k, v, probs);
  check_contiguous(op, "out", out);
  check_shape(op, "out", out, q.shape());
  check_dtype(op, "out", out, q.dtype());
  check_same_device(op, {&q, &k, &v, &out, &probs});
  if (q.is_cuda()) {
    SY_ON_CUDA(cuda::attention_forward(q, k, v, out, probs, stream));
    return;
  }
  cpu::dispatch_float(
      q, [&](auto* type) { attention_forward_cpu<std::remove_pointer_t<decltype(type)>>(q, k, v, out, probs); });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dprobs, StreamRef stream) {
  const char* op = "attention_backward";
  check_attention_args(op, q, k, v, probs);
  const std::pair<const char*, const Tensor*> like_q[] = {{"dout", &dout}, {"dq", &dq}};
  for (const auto& [name, t] : like_q) {
    check_contiguous(op, name, *t);
    check_shape(op, name, *t, q.shape());
    check_dtype(op, name, *t, q.dtype());
  }
  const std::pair<const char*, const Tensor*> like_k[] = {{"dk", &dk}, {"dv", &dv}};
  for (const auto& [name, t] : like_k) {
    check_contiguous(op, name, *t);
    check_shape(op, name, *t, k.shape());
    check_dtype(op, name, *t, q.dtype());
  }
  check_contiguous(op, "dprobs", dprobs);
  check_shape(op, "dprobs", dprobs, probs.shape());
  check_dtype(op, "dprobs", dprobs, q.dtype());
  check_same_device(op, {&q, &k, &v, &probs, &dout, &dq, &dk, &dv, &dprobs});
  if (q.is_cuda()) {
    SY_ON_CUDA(cuda::attention_backward(q, k, v, probs, dout, dq, dk, dv, dprobs, stream));
    return;
  }
  // The reference keeps dP and dS in double, so it leaves the dprobs scratch unused.
  cpu::dispatch_float(q, [&](auto* type) {
    attention_backward_cpu<std::remove_pointer_t<decltype(type)>>(q, k, v, probs, dout, dq, dk, dv);
  });
}

}  // namespace sy
