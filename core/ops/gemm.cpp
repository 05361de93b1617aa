// GEMM: argument checks, dispatch, and the CPU reference. The reference accumulates in double
// for every dtype, and is cache-blocked because the CPU path also trains tiny models.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"
#include "core/ops/gemm_checks.h"

namespace sy {
namespace {

// Block sizes of the CPU kernel: an a panel [32, 128] and a b panel [128, 128] of doubles
// (32 KiB + 128 KiB) stay in L1/L2 while the accumulator rows are updated.
constexpr std::int64_t kBlockM = 32;
constexpr std::int64_t kBlockN = 128;
constexpr std::int64_t kBlockK = 128;

// Both operands are packed into contiguous double panels, op(a) as [mb, kb] and op(b) as
// [kb, nb], so the inner loop (over j, i-k-j order) runs along contiguous memory and vectorises
// whatever the transposes and dtypes. The packing costs 1/kBlockM + 1/kBlockN of the work.
template <class TA, class TC>
void gemm_cpu(const TA* a, const TA* b, TC* c, const GemmProblem& p) {
  std::vector<double> a_panel(std::size_t(kBlockM * kBlockK)), b_panel(std::size_t(kBlockK * kBlockN));
  std::vector<double> acc(std::size_t(kBlockM * kBlockN));
  for (std::int64_t item = 0; item < p.batch; ++item) {
    const TA* a_item = a + item * p.stride_a;
    const TA* b_item = b + item * p.stride_b;
    TC* c_item = c + item * p.stride_c;
    for (std::int64_t j0 = 0; j0 < p.n; j0 += kBlockN) {
      const std::int64_t nb = std::min(kBlockN, p.n - j0);
      for (std::int64_t i0 = 0; i0 < p.m; i0 += kBlockM) {
        const std::int64_t mb = std::min(kBlockM, p.m - i0);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t k0 = 0; k0 < p.k; k0 += kBlockK) {
          const std::int64_t kb = std::min(kBlockK, p.k - k0);
          for (std::int64_t i = 0; i < mb; ++i) {
            for (std::int64_t kk = 0; kk < kb; ++kk) {
              const TA v = p.trans_a ? a_item[(k0 + kk) * p.lda + i0 + i] : a_item[(i0 + i) * p.lda + k0 + kk];
              a_panel[std::size_t(i * kb + kk)] = to_double(v);
            }
          }
          for (std::int64_t kk = 0; kk < kb; ++kk) {
            for (std::int64_t j = 0; j < nb; ++j) {
              const TA v = p.trans_b ? b_item[(j0 + j) * p.ldb + k0 + kk] : b_item[(k0 + kk) * p.ldb + j0 + j];
              b_panel[std::size_t(kk * nb + j)] = to_double(v);
            }
          }
          for (std::int64_t i = 0; i < mb; ++i) {
            double* __restrict acc_row = acc.data() + i * nb;
            const double* a_row = a_panel.data() + i * kb;
            for (std::int64_t kk = 0; kk < kb; ++kk) {
              const double a_ik = a_row[kk];
              const double* __restrict b_row = b_panel.data() + kk * nb;
              for (std::int64_t j = 0; j < nb; ++j) acc_row[j] += a_ik * b_row[j];
            }
          }
        }
        for (std::int64_t i = 0; i < mb; ++i) {
          TC* c_row = c_item + (i0 + i) * p.ldc + j0;
          const double* acc_row = acc.data() + i * nb;
          for (std::int64_t j = 0; j < nb; ++j) {
            double value = p.alpha * acc_row[j];
            if (p.beta != 0.0) value += p.beta * to_double(c_row[j]);  // beta = 0: c is never read
            c_row[j] = from_double<TC>(value);
          }
        }
      }
    }
  }
}

void gemm_cpu_dispatch(const Tensor& a, const Tensor& b, const Tensor& c, GemmProblem p, float alpha, float beta) {
  p.alpha = alpha;
  p.beta = beta;
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  cpu::dispatch_float(a, [&](auto* type) {
    using TA = std::remove_pointer_t<decltype(type)>;
    const TA* ap = static_cast<const TA*>(a.data());
    const TA* bp = static_cast<const TA*>(b.data());
    if (c.dtype() == a.dtype()) {
      gemm_cpu<TA, TA>(ap, bp, static_cast<TA*>(c.data()), p);
    } else {
      gemm_cpu<TA, float>(ap, bp, static_cast<float*>(c.data()), p);
    }
  });
}

std::string strides_string(const Tensor& t) {
  Shape strides;
  for (int i = 0; i < t.dim(); ++i) strides.push_back(t.stride(i));
  return shape_string(strides);
}

// A matrix operand: last axis contiguous, rows at least a row apart, no negative strides.
void check_matrix_layout(const char* op, const char* arg, const Tensor& t, int dims) {
  SY_CHECK(t.defined()) << op << ": " << arg << " is not set";
  SY_CHECK(t.dim() == dims) << op << ": " << arg << " must have " << dims << " dimensions, got " << t.describe();
  check_float(op, arg, t);
  for (int i = 0; i < t.dim(); ++i) {
    SY_CHECK(t.stride(i) >= 0) << op << ": " << arg << " has a negative stride: " << t.describe() << " with strides "
                               << strides_string(t);
  }
  SY_CHECK(t.stride(-1) == 1 || t.size(-1) <= 1) << op << ": " << arg << " must have a contiguous last axis, got "
                                                 << t.describe() << " with strides " << strides_string(t);
  SY_CHECK(t.stride(-2) >= t.size(-1) || t.size(-2) <= 1)
      << op << ": " << arg << "'s rows overlap (row stride " << t.stride(-2) << " < row length " << t.size(-1)
      << "), got " << t.describe() << " with strides " << strides_string(t);
}

}  // namespace

GemmProblem check_gemm_args(const char* op, const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a,
                            bool trans_b, int dims, const char* c_name) {
  check_matrix_layout(op, "a", a, dims);
  check_matrix_layout(op, "b", b, dims);
  check_matrix_layout(op, c_name, c, dims);
  check_dtype(op, "b", b, a.dtype());
  SY_CHECK(c.dtype() == a.dtype() || c.dtype() == DType::f32)
      << op << ": " << c_name << " must be " << dtype_name(a.dtype()) << " (a's dtype) or f32, got " << c.describe();
  check_same_device(op, {&a, &b, &c});

  GemmProblem p;
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  const std::int64_t m = trans_a ? a.size(-1) : a.size(-2), k_a = trans_a ? a.size(-2) : a.size(-1);
  const std::int64_t k_b = trans_b ? b.size(-1) : b.size(-2), n = trans_b ? b.size(-2) : b.size(-1);
  SY_CHECK(k_a == k_b) << op << ": inner dimensions differ: op(a) is [" << m << ", " << k_a << "], op(b) is [" << k_b
                       << ", " << n << "] (a " << a.describe() << (trans_a ? " transposed" : "") << ", b "
                       << b.describe() << (trans_b ? " transposed" : "") << ")";
  if (dims == 3) {
    p.batch = c.size(0);
    SY_CHECK(a.size(0) == p.batch && b.size(0) == p.batch)
        << op << ": batch sizes differ: a has " << a.size(0) << ", b has " << b.size(0) << ", " << c_name << " has "
        << c.size(0);
    check_shape(op, c_name, c, {p.batch, m, n});
    SY_CHECK(c.stride(0) != 0 || p.batch <= 1)
        << op << ": " << c_name << " has batch stride 0, so all " << p.batch << " items would write the same matrix";
    p.stride_a = a.stride(0);
    p.stride_b = b.stride(0);
    p.stride_c = c.stride(0);
  } else {
    check_shape(op, c_name, c, {m, n});
  }
  p.m = m;
  p.n = n;
  p.k = k_a;
  p.lda = a.stride(-2);
  p.ldb = b.stride(-2);
  p.ldc = c.stride(-2);
  return p;
}

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha, float beta,
          StreamRef stream) {
  const GemmProblem p = check_gemm_args("gemm", a, b, c, trans_a, trans_b, 2);
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm(a, b, c, trans_a, trans_b, alpha, beta, stream));
    return;
  }
  gemm_cpu_dispatch(a, b, c, p, alpha, beta);
}

void gemm_batched(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha,
                  float beta, StreamRef stream) {
  const GemmProblem p = check_gemm_args("gemm_batched", a, b, c, trans_a, trans_b, 3);
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm_batched(a, b, c, trans_a, trans_b, alpha, beta, stream));
    return;
  }
  gemm_cpu_dispatch(a, b, c, p, alpha, beta);
}

}  // namespace sy
