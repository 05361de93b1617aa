// Grouped GEMM over row blocks: argument checks, dispatch, and the CPU reference, which is
// simply gemm() on each group's rows (an empty group still scales c[g] by beta in the
// weight-gradient form, which gemm does for K = 0).
#include <utility>

#include "core/ops.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// Checks what both forms share and returns R, the sum of the group sizes.
std::int64_t check_grouped_args(const char* op, const Tensor& a, const Tensor& b, const Tensor& c,
                                std::span<const std::int64_t> group_rows) {
  for (auto [arg, t] : {std::pair{"a", &a}, std::pair{"b", &b}, std::pair{"c", &c}}) {
    SY_CHECK(t->defined()) << op << ": " << arg << " is not set";
    check_contiguous(op, arg, *t);
    check_float(op, arg, *t);
  }
  check_dtype(op, "b", b, a.dtype());
  SY_CHECK(c.dtype() == a.dtype() || c.dtype() == DType::f32)
      << op << ": c must be " << dtype_name(a.dtype()) << " (a's dtype) or f32, got " << c.describe();
  check_same_device(op, {&a, &b, &c});
  std::int64_t rows = 0;
  for (std::size_t g = 0; g < group_rows.size(); ++g) {
    SY_CHECK(group_rows[g] >= 0) << op << ": group " << g << " has " << group_rows[g] << " rows";
    rows += group_rows[g];
  }
  SY_CHECK(a.dim() == 2 && a.size(0) == rows)
      << op << ": a must be [R, K] with R = " << rows << " (the sum of the " << group_rows.size()
      << " group sizes), got " << a.describe();
  return rows;
}

}  // namespace

void gemm_grouped(const Tensor& a, const Tensor& b, const Tensor& c, std::span<const std::int64_t> group_rows,
                  bool trans_b, float alpha, float beta, StreamRef stream) {
  const char* op = "gemm_grouped";
  const std::int64_t rows = check_grouped_args(op, a, b, c, group_rows);
  const auto groups = std::int64_t(group_rows.size());
  SY_CHECK(b.dim() == 3 && b.size(0) == groups)
      << op << ": b must be [G, " << (trans_b ? "N, K" : "K, N") << "] with G = " << groups << ", got " << b.describe();
  const std::int64_t k = a.size(1), n = trans_b ? b.size(1) : b.size(2);
  check_shape(op, "b", b, trans_b ? Shape{groups, n, k} : Shape{groups, k, n});
  check_shape(op, "c", c, {rows, n});
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm_grouped(a, b, c, group_rows.data(), group_rows.size(), trans_b, alpha, beta, stream));
    return;
  }
  std::int64_t first = 0;
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t m = group_rows[std::size_t(g)];
    if (m > 0) gemm(a.slice_rows(first, m), b.select(g), c.slice_rows(first, m), false, trans_b, alpha, beta);
    first += m;
  }
}

void gemm_grouped_trans_a(const Tensor& a, const Tensor& b, const Tensor& c, std::span<const std::int64_t> group_rows,
                          float alpha, float beta, StreamRef stream) {
  const char* op = "gemm_grouped_trans_a";
  const std::int64_t rows = check_grouped_args(op, a, b, c, group_rows);
  const auto groups = std::int64_t(group_rows.size());
  SY_CHECK(b.dim() == 2 && b.size(0) == rows)
      << op << ": b must be [R, N] with R = " << rows << ", got " << b.describe();
  check_shape(op, "c", c, {groups, a.size(1), b.size(1)});
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm_grouped_trans_a(a, b, c, group_rows.data(), group_rows.size(), alpha, beta, stream));
    return;
  }
  std::int64_t first = 0;
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t m = group_rows[std::size_t(g)];
    gemm(a.slice_rows(first, m), b.slice_rows(first, m), c.select(g), true, false, alpha, beta);
    first += m;
  }
}

}  // namespace sy
