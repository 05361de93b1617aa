// GEMM CPU reference against a naive triple loop in double: every transpose combination, odd
// sizes, strided rows, shared batch operands, beta accumulation, and the argument checks.
#include <cmath>
#include <limits>

#include "tests/testing.h"

namespace sy::test {
namespace {

// A row-major matrix read back from memory through (row stride, 1).
struct HostMatrix {
  const std::vector<double>* values;
  std::int64_t offset, ld;
  double at(std::int64_t r, std::int64_t c) const { return (*values)[std::size_t(offset + r * ld + c)]; }
};

// c[i, j] = alpha * sum_k op(a)[i, k] * op(b)[k, j] + beta * c0[i, j], in double.
std::vector<double> naive_gemm(const HostMatrix& a, const HostMatrix& b, const std::vector<double>& c0, std::int64_t m,
                               std::int64_t n, std::int64_t k, bool trans_a, bool trans_b, double alpha, double beta) {
  std::vector<double> c(std::size_t(m * n));
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (std::int64_t p = 0; p < k; ++p)
        sum += (trans_a ? a.at(p, i) : a.at(i, p)) * (trans_b ? b.at(j, p) : b.at(p, j));
      c[std::size_t(i * n + j)] = alpha * sum + (beta != 0 ? beta * c0[std::size_t(i * n + j)] : 0.0);
    }
  }
  return c;
}

Shape stored_shape(std::int64_t rows, std::int64_t cols, bool trans) {
  return trans ? Shape{cols, rows} : Shape{rows, cols};
}

class GemmTransposes : public ::testing::TestWithParam<std::pair<bool, bool>> {};

// "NT": a as stored, b transposed.
std::string transposes_name(const ::testing::TestParamInfo<std::pair<bool, bool>>& param_info) {
  return std::string(param_info.param.first ? "T" : "N") + (param_info.param.second ? "T" : "N");
}

TEST_P(GemmTransposes, MatchesNaiveLoopOnOddSizes) {
  const auto [trans_a, trans_b] = GetParam();
  const std::int64_t m = 17, n = 9, k = 33;
  OwnedTensor a = random_tensor(stored_shape(m, k, trans_a), DType::f64, Device::cpu, 11);
  OwnedTensor b = random_tensor(stored_shape(k, n, trans_b), DType::f64, Device::cpu, 12);
  OwnedTensor c({m, n}, DType::f64, Device::cpu);
  poison(c);
  gemm(a, b, c, trans_a, trans_b, 1.5f);
  const std::vector<double> av = to_vector(a), bv = to_vector(b);
  const std::vector<double> expected =
      naive_gemm({&av, 0, a.view().size(1)}, {&bv, 0, b.view().size(1)}, {}, m, n, k, trans_a, trans_b, 1.5, 0.0);
  EXPECT_LT(relative_error(to_vector(c), expected), 1e-14);
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, GemmTransposes,
                         ::testing::Values(std::pair{false, false}, std::pair{false, true}, std::pair{true, false},
                                           std::pair{true, true}),
                         transposes_name);

TEST(Gemm, LargerThanOneBlockMatchesNaiveLoop) {
  // 70 x 300 x 150 crosses every block edge of the CPU kernel (32, 128, 128) with a remainder.
  const std::int64_t m = 70, n = 300, k = 150;
  OwnedTensor a = random_tensor({k, m}, DType::f32, Device::cpu, 13);
  OwnedTensor b = random_tensor({n, k}, DType::f32, Device::cpu, 14);
  OwnedTensor c({m, n}, DType::f32, Device::cpu);
  gemm(a, b, c, true, true);
  const std::vector<double> av = to_vector(a), bv = to_vector(b);
  const std::vector<double> expected = naive_gemm({&av, 0, m}, {&bv, 0, k}, {}, m, n, k, true, true, 1.0, 0.0);
  // Accumulated in double; only the f32 output rounding remains (2^-24).
  EXPECT_LT(relative_error(to_vector(c), expected), 1e-7);
}

TEST(Gemm, StridedRowsReadOnlyTheView) {
  // a, b and c are column slices of wider matrices whose other columns hold NaN (inputs) or a
  // sentinel (output): a product that strays outside a view turns NaN or overwrites a sentinel.
  const std::int64_t m = 7, n = 5, k = 11, width = 20, offset = 3;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  OwnedTensor a_wide({m, width}, DType::f64, Device::cpu), b_wide({k, width}, DType::f64, Device::cpu);
  OwnedTensor c_wide({m, width}, DType::f64, Device::cpu);
  const std::vector<double> a_rand = to_vector(random_tensor({m, width}, DType::f64, Device::cpu, 15));
  const std::vector<double> b_rand = to_vector(random_tensor({k, width}, DType::f64, Device::cpu, 16));
  std::vector<double> a_values(a_rand.size(), nan), b_values(b_rand.size(), nan),
      c_values(std::size_t(m * width), -7.0);
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t col = offset; col < offset + k; ++col)
      a_values[std::size_t(r * width + col)] = a_rand[std::size_t(r * width + col)];
  for (std::int64_t r = 0; r < k; ++r)
    for (std::int64_t col = offset; col < offset + n; ++col)
      b_values[std::size_t(r * width + col)] = b_rand[std::size_t(r * width + col)];
  from_vector(a_wide, a_values);
  from_vector(b_wide, b_values);
  from_vector(c_wide, c_values);
  const Tensor a = a_wide.view().as_strided({m, k}, {width, 1}, offset);
  const Tensor b = b_wide.view().as_strided({k, n}, {width, 1}, offset);
  const Tensor c = c_wide.view().as_strided({m, n}, {width, 1}, offset);
  gemm(a, b, c, false, false);

  const std::vector<double> expected =
      naive_gemm({&a_values, offset, width}, {&b_values, offset, width}, {}, m, n, k, false, false, 1.0, 0.0);
  const std::vector<double> out = to_vector(c_wide);
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t col = 0; col < width; ++col) {
      const double got = out[std::size_t(r * width + col)];
      if (col >= offset && col < offset + n) {
        EXPECT_NEAR(got, expected[std::size_t(r * n + col - offset)], 1e-12) << r << ", " << col;
      } else {
        EXPECT_EQ(got, -7.0) << "wrote outside the view at " << r << ", " << col;
      }
    }
  }
}

TEST(GemmBatched, SharedOperandWithBatchStrideZero) {
  // b is one [K, N] weight broadcast to every batch item through batch stride 0.
  const std::int64_t batch = 3, m = 5, n = 7, k = 9;
  OwnedTensor a = random_tensor({batch, m, k}, DType::f64, Device::cpu, 17);
  OwnedTensor weight = random_tensor({k, n}, DType::f64, Device::cpu, 18);
  OwnedTensor c({batch, m, n}, DType::f64, Device::cpu);
  poison(c);
  gemm_batched(a, weight.view().as_strided({batch, k, n}, {0, n, 1}), c, false, false);
  const std::vector<double> av = to_vector(a), wv = to_vector(weight), cv = to_vector(c);
  for (std::int64_t item = 0; item < batch; ++item) {
    const std::vector<double> expected =
        naive_gemm({&av, item * m * k, k}, {&wv, 0, n}, {}, m, n, k, false, false, 1.0, 0.0);
    const std::vector<double> got(cv.begin() + item * m * n, cv.begin() + (item + 1) * m * n);
    EXPECT_LT(relative_error(got, expected), 1e-14) << "batch item " << item;
  }
}

TEST(GemmBatched, EveryTransposeMatchesPerItemGemm) {
  const std::int64_t batch = 4, m = 6, n = 3, k = 5;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << trans_a << ", trans_b " << trans_b);
      const Shape a_item = stored_shape(m, k, trans_a), b_item = stored_shape(k, n, trans_b);
      OwnedTensor a = random_tensor({batch, a_item[0], a_item[1]}, DType::f64, Device::cpu, 19);
      OwnedTensor b = random_tensor({batch, b_item[0], b_item[1]}, DType::f64, Device::cpu, 20);
      OwnedTensor c({batch, m, n}, DType::f64, Device::cpu);
      gemm_batched(a, b, c, trans_a, trans_b);
      const std::vector<double> av = to_vector(a), bv = to_vector(b), cv = to_vector(c);
      for (std::int64_t item = 0; item < batch; ++item) {
        const std::vector<double> expected = naive_gemm({&av, item * m * k, a_item[1]}, {&bv, item * k * n, b_item[1]},
                                                        {}, m, n, k, trans_a, trans_b, 1.0, 0.0);
        const std::vector<double> got(cv.begin() + item * m * n, cv.begin() + (item + 1) * m * n);
        EXPECT_LT(relative_error(got, expected), 1e-14) << "batch item " << item;
      }
    }
  }
}

TEST(Gemm, BetaAccumulatesOntoC) {
  const std::int64_t m = 9, n = 13, k = 4;
  OwnedTensor a = random_tensor({m, k}, DType::f64, Device::cpu, 21);
  OwnedTensor b = random_tensor({k, n}, DType::f64, Device::cpu, 22);
  OwnedTensor c = random_tensor({m, n}, DType::f64, Device::cpu, 23);
  const std::vector<double> av = to_vector(a), bv = to_vector(b), c0 = to_vector(c);
  gemm(a, b, c, false, false, 2.0f, 0.5f);
  const std::vector<double> expected = naive_gemm({&av, 0, k}, {&bv, 0, n}, c0, m, n, k, false, false, 2.0, 0.5);
  EXPECT_LT(relative_error(to_vector(c), expected), 1e-14);
}

TEST(Gemm, BetaZeroIgnoresNanInC) {
  OwnedTensor a = random_tensor({4, 3}, DType::f32, Device::cpu, 24);
  OwnedTensor b = random_tensor({3, 5}, DType::f32, Device::cpu, 25);
  OwnedTensor c({4, 5}, DType::f32, Device::cpu);
  poison(c);  // NaN everywhere: 0 * NaN would be NaN, so c must not be read at all
  gemm(a, b, c, false, false, 1.0f, 0.0f);
  const std::vector<double> av = to_vector(a), bv = to_vector(b);
  const std::vector<double> expected = naive_gemm({&av, 0, 3}, {&bv, 0, 5}, {}, 4, 5, 3, false, false, 1.0, 0.0);
  EXPECT_LT(relative_error(to_vector(c), expected), 1e-7);
}

// A weight gradient over no rows (K = 0): beta = 0 (GradMode::overwrite) writes zeros over NaN,
// beta = 1 leaves c as it was; plain and batched.
TEST(Gemm, EmptyReductionWritesZerosAtBetaZero) {
  // Empty operands as the arena hands them out: a real address, no rows.
  OwnedTensor storage({1, 8}, DType::f32, Device::cpu), c({4, 5}, DType::f32, Device::cpu);
  const Tensor a = storage.view().as_strided({0, 4}, {4, 1}), b = storage.view().as_strided({0, 5}, {5, 1});
  poison(c);
  gemm(a, b, c, true, false, 1.0f, 0.0f);
  EXPECT_EQ(to_vector(c), std::vector<double>(20, 0.0));
  OwnedTensor kept = random_tensor({4, 5}, DType::f32, Device::cpu, 28);
  const std::vector<double> before = to_vector(kept);
  gemm(a, b, kept, true, false, 1.0f, 1.0f);
  EXPECT_EQ(to_vector(kept), before);
  const Tensor ab = storage.view().as_strided({3, 0, 4}, {0, 4, 1}), bb = storage.view().as_strided({3, 0, 5}, {0, 5, 1});
  OwnedTensor cb({3, 4, 5}, DType::f32, Device::cpu);
  poison(cb);
  gemm_batched(ab, bb, cb, true, false, 1.0f, 0.0f);
  EXPECT_EQ(to_vector(cb), std::vector<double>(60, 0.0));
}

TEST(Gemm, Bf16InputsWriteF32OutputAccumulatedExactly) {
  const std::int64_t m = 12, n = 10, k = 257;
  OwnedTensor a = random_tensor({m, k}, DType::bf16, Device::cpu, 26);
  OwnedTensor b = random_tensor({k, n}, DType::bf16, Device::cpu, 27);
  OwnedTensor c({m, n}, DType::f32, Device::cpu);
  gemm(a, b, c, false, false);
  const std::vector<double> av = to_vector(a), bv = to_vector(b);
  const std::vector<double> expected = naive_gemm({&av, 0, k}, {&bv, 0, n}, {}, m, n, k, false, false, 1.0, 0.0);
  // The same rounded inputs, accumulated in double: only the f32 output rounding differs.
  EXPECT_LT(relative_error(to_vector(c), expected), 1e-7);
}

TEST(Gemm, RejectsMismatchedInnerDimensions) {
  OwnedTensor a({17, 33}, DType::f32, Device::cpu), b({32, 9}, DType::f32, Device::cpu),
      c({17, 9}, DType::f32, Device::cpu);
  expect_error([&] { gemm(a, b, c, false, false); },
                          "gemm: inner dimensions differ: op(a) is [17, 33], op(b) is [32, 9]");
}

TEST(Gemm, RejectsOutputOfTheWrongShape) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({5, 3}, DType::f32, Device::cpu),
      c({4, 3}, DType::f32, Device::cpu);
  expect_error([&] { gemm(a, b, c, false, true); }, "gemm: c must have shape [4, 5], got f32[4, 3] cpu");
}

TEST(Gemm, RejectsMixedOperandDtypes) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({3, 5}, DType::bf16, Device::cpu),
      c({4, 5}, DType::f32, Device::cpu);
  expect_error([&] { gemm(a, b, c, false, false); }, "gemm: b must be f32, got bf16[3, 5] cpu");
}

TEST(GemmBatched, RejectsMismatchedBatchSizes) {
  OwnedTensor a({3, 4, 2}, DType::f32, Device::cpu), b({2, 2, 5}, DType::f32, Device::cpu);
  OwnedTensor c({3, 4, 5}, DType::f32, Device::cpu);
  expect_error([&] { gemm_batched(a, b, c, false, false); },
                          "gemm_batched: batch sizes differ: a has 3, b has 2, c has 3");
}

TEST(GemmBatched, RejectsOutputWithBatchStrideZero) {
  OwnedTensor a({3, 4, 2}, DType::f32, Device::cpu), b({3, 2, 5}, DType::f32, Device::cpu);
  OwnedTensor c({4, 5}, DType::f32, Device::cpu);
  expect_error(
      [&] {
        gemm_batched(a, b, c.view().as_strided({3, 4, 5}, {0, 5, 1}), false, false);
      },
      "gemm_batched: c has batch stride 0, so all 3 items would write the same matrix");
}

}  // namespace
}  // namespace sy::test
