// Argument checks shared by the GEMM ops (gemm.cpp, gemm_gelu.cpp): operand layouts, dtypes,
// devices and matching sizes, each message naming the op and the argument.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace sy {

// One batch of matrix products; items are `batch_stride` elements apart (0: shared operand).
struct GemmProblem {
  std::int64_t batch = 1, m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  std::int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  bool trans_a = false, trans_b = false;
  double alpha = 1.0, beta = 0.0;
};

// Checks a, b, c of a plain (dims = 2) or batched (dims = 3) GEMM and returns the problem.
// `c_name` is what the op calls its output in messages.
GemmProblem check_gemm_args(const char* op, const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a,
                            bool trans_b, int dims, const char* c_name = "c");

}  // namespace sy
