// Grouped GEMM CPU reference against per-group triple loops in double: uneven and empty groups,
// both transposes of b, the weight-gradient form, beta accumulation, every dtype pairing, and the
// argument checks.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

struct GroupedCase {
  DType operands, output;
};

void PrintTo(const GroupedCase& c, std::ostream* os) {
  *os << dtype_name(c.operands) << " -> " << dtype_name(c.output);
}

std::string grouped_case_name(const ::testing::TestParamInfo<GroupedCase>& param_info) {
  return std::string(dtype_name(param_info.param.operands)) + "_to_" + dtype_name(param_info.param.output);
}

// The references read the already rounded inputs in double, so only the output rounding remains.
double tolerance_for(DType output) {
  return output == DType::f64 ? 1e-14 : output == DType::f32 ? 1e-6 : 1e-2;
}

// Empty groups first, in the middle and last.
const std::vector<std::int64_t> kGroupRows{0, 3, 7, 0, 1, 5, 0};

std::int64_t total(const std::vector<std::int64_t>& rows) {
  std::int64_t sum = 0;
  for (std::int64_t r : rows) sum += r;
  return sum;
}

class GemmGroupedCpu : public ::testing::TestWithParam<GroupedCase> {};

TEST_P(GemmGroupedCpu, EachGroupMultipliesItsRowsByItsMatrix) {
  const auto [dt, out_dt] = GetParam();
  const auto groups = std::int64_t(kGroupRows.size());
  const std::int64_t rows = total(kGroupRows), k = 6, n = 4;
  for (bool trans_b : {false, true}) {
    for (float beta : {0.0f, 0.5f}) {
      SCOPED_TRACE(::testing::Message() << "trans_b " << trans_b << " beta " << beta);
      OwnedTensor a = random_tensor({rows, k}, dt, Device::cpu, 1);
      OwnedTensor b = random_tensor(trans_b ? Shape{groups, n, k} : Shape{groups, k, n}, dt, Device::cpu, 2);
      OwnedTensor c = random_tensor({rows, n}, out_dt, Device::cpu, 3);
      const std::vector<double> av = to_vector(a), bv = to_vector(b), c0 = to_vector(c);
      if (beta == 0.0f) poison(c);  // beta = 0 must not read c

      gemm_grouped(a, b, c, kGroupRows, trans_b, 1.5f, beta);

      std::vector<double> expected(std::size_t(rows * n));
      std::int64_t first = 0;
      for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t i = first; i < first + kGroupRows[std::size_t(g)]; ++i) {
          for (std::int64_t j = 0; j < n; ++j) {
            double sum = 0;
            for (std::int64_t p = 0; p < k; ++p) {
              const double w = trans_b ? bv[std::size_t((g * n + j) * k + p)] : bv[std::size_t((g * k + p) * n + j)];
              sum += av[std::size_t(i * k + p)] * w;
            }
            const std::size_t at = std::size_t(i * n + j);
            expected[at] = 1.5 * sum + (beta != 0.0f ? beta * c0[at] : 0.0);
          }
        }
        first += kGroupRows[std::size_t(g)];
      }
      EXPECT_LT(relative_error(to_vector(c), expected), tolerance_for(out_dt));
    }
  }
}

TEST_P(GemmGroupedCpu, TransAReducesOverEachGroupsRows) {
  const auto [dt, out_dt] = GetParam();
  const auto groups = std::int64_t(kGroupRows.size());
  const std::int64_t rows = total(kGroupRows), k = 5, n = 3;
  for (float beta : {0.0f, 1.0f, 0.5f}) {
    SCOPED_TRACE(::testing::Message() << "beta " << beta);
    OwnedTensor a = random_tensor({rows, k}, dt, Device::cpu, 4);
    OwnedTensor b = random_tensor({rows, n}, dt, Device::cpu, 5);
    OwnedTensor c = random_tensor({groups, k, n}, out_dt, Device::cpu, 6);
    const std::vector<double> av = to_vector(a), bv = to_vector(b), c0 = to_vector(c);
    if (beta == 0.0f) poison(c);  // an empty group must write zeros, not read c

    gemm_grouped_trans_a(a, b, c, kGroupRows, 0.75f, beta);

    std::vector<double> expected(std::size_t(groups * k * n));
    std::int64_t first = 0;
    for (std::int64_t g = 0; g < groups; ++g) {
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          double sum = 0;
          for (std::int64_t r = first; r < first + kGroupRows[std::size_t(g)]; ++r)
            sum += av[std::size_t(r * k + i)] * bv[std::size_t(r * n + j)];
          const std::size_t at = std::size_t((g * k + i) * n + j);
          expected[at] = 0.75 * sum + (beta != 0.0f ? beta * c0[at] : 0.0);
        }
      }
      first += kGroupRows[std::size_t(g)];
    }
    EXPECT_LT(relative_error(to_vector(c), expected), tolerance_for(out_dt));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmGroupedCpu,
                         ::testing::Values(GroupedCase{DType::f64, DType::f64}, GroupedCase{DType::f32, DType::f32},
                                           GroupedCase{DType::bf16, DType::bf16},
                                           GroupedCase{DType::bf16, DType::f32}),
                         grouped_case_name);

TEST(GemmGrouped, AllGroupsEmptyLeavesCUntouched) {
  // Zero-row views of real buffers, as an arena hands out for a rank that received no tokens.
  OwnedTensor a({1, 4}, DType::f32, Device::cpu), b = random_tensor({2, 4, 3}, DType::f32, Device::cpu, 7);
  OwnedTensor c = random_tensor({1, 3}, DType::f32, Device::cpu, 8);
  const std::vector<double> before = to_vector(c);
  gemm_grouped(a.view().slice_rows(0, 0), b, c.view().slice_rows(0, 0), std::vector<std::int64_t>{0, 0}, false);
  EXPECT_EQ(to_vector(c), before);
}

TEST(GemmGrouped, RejectsRowsThatDoNotSumToA) {
  OwnedTensor a({6, 4}, DType::f32, Device::cpu), b({2, 4, 3}, DType::f32, Device::cpu);
  OwnedTensor c({6, 3}, DType::f32, Device::cpu);
  expect_error([&] { gemm_grouped(a, b, c, std::vector<std::int64_t>{2, 3}, false); },
               "gemm_grouped: a must be [R, K] with R = 5 (the sum of the 2 group sizes), got f32[6, 4] cpu");
}

TEST(GemmGrouped, RejectsOneMatrixPerGroupMissing) {
  OwnedTensor a({5, 4}, DType::f32, Device::cpu), b({3, 4, 3}, DType::f32, Device::cpu);
  OwnedTensor c({5, 3}, DType::f32, Device::cpu);
  expect_error([&] { gemm_grouped(a, b, c, std::vector<std::int64_t>{2, 3}, false); },
               "gemm_grouped: b must be [G, K, N] with G = 2, got f32[3, 4, 3] cpu");
}

TEST(GemmGrouped, TransARejectsMisshapenOutput) {
  OwnedTensor a({5, 4}, DType::bf16, Device::cpu), b({5, 3}, DType::bf16, Device::cpu);
  OwnedTensor c({2, 3, 4}, DType::f32, Device::cpu);
  expect_error([&] { gemm_grouped_trans_a(a, b, c, std::vector<std::int64_t>{2, 3}); },
               "gemm_grouped_trans_a: c must have shape [2, 4, 3]");
}

}  // namespace
}  // namespace sy::test
