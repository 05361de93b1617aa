// Grouped GEMM on CUDA against the CPU reference on fresh random inputs: f32, bf16, and bf16
// operands with an f32 output (the weight gradient, which takes the per-group fallback); uneven
// and empty groups; odd K (16-bit row blocks off 16-byte boundaries); many calls queued without
// a synchronisation (the pointer-array ring); and more groups than the first call allocated for.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// f32: fp32 accumulation, no TF32 (1e-5). bf16 output: rounded to 8 bits (1e-2).
double tolerance_for(DType output) { return output == DType::f32 ? 1e-5 : 1e-2; }

struct GroupedCase {
  DType operands, output;
};

void PrintTo(const GroupedCase& c, std::ostream* os) {
  *os << dtype_name(c.operands) << " -> " << dtype_name(c.output);
}

std::string grouped_case_name(const ::testing::TestParamInfo<GroupedCase>& param_info) {
  return std::string(dtype_name(param_info.param.operands)) + "_to_" + dtype_name(param_info.param.output);
}

std::int64_t total(const std::vector<std::int64_t>& rows) {
  std::int64_t sum = 0;
  for (std::int64_t r : rows) sum += r;
  return sum;
}

class GemmGroupedGpu : public ::testing::TestWithParam<GroupedCase> {};

TEST_P(GemmGroupedGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  const double tol = tolerance_for(out_dt);
  const std::vector<std::int64_t> group_rows{37, 0, 128, 5, 0, 64, 1};
  const auto groups = std::int64_t(group_rows.size());
  const std::int64_t rows = total(group_rows);
  std::uint64_t seed = 300;
  for (auto [k, n] : {std::pair{96, 80}, std::pair{33, 17}}) {
    for (bool trans_b : {false, true}) {
      for (float beta : {0.0f, 0.75f}) {
        SCOPED_TRACE(::testing::Message() << "K " << k << " N " << n << " trans_b " << trans_b << " beta " << beta);
        seed += 10;
        OwnedTensor a = random_tensor({rows, k}, dt, Device::cuda, seed);
        OwnedTensor b = random_tensor(trans_b ? Shape{groups, n, k} : Shape{groups, k, n}, dt, Device::cuda, seed + 1);
        OwnedTensor c = random_tensor({rows, n}, out_dt, Device::cuda, seed + 2);
        OwnedTensor ac = convert(a, DType::f64, Device::cpu), bc = convert(b, DType::f64, Device::cpu);
        OwnedTensor cc = convert(c, DType::f64, Device::cpu);
        if (beta == 0.0f) poison(c);
        gemm_grouped(a, b, c, group_rows, trans_b, 1.25f, beta);
        device_synchronize();
        gemm_grouped(ac, bc, cc, group_rows, trans_b, 1.25f, beta);
        EXPECT_LT(relative_error(c, cc), tol);

        // The weight-gradient form: a [R, K], b' [R, N] -> [G, K, N].
        OwnedTensor b2 = random_tensor({rows, n}, dt, Device::cuda, seed + 3);
        OwnedTensor c2 = random_tensor({groups, k, n}, out_dt, Device::cuda, seed + 4);
        OwnedTensor b2c = convert(b2, DType::f64, Device::cpu), c2c = convert(c2, DType::f64, Device::cpu);
        if (beta == 0.0f) poison(c2);  // empty groups must be zeroed, not left NaN
        gemm_grouped_trans_a(a, b2, c2, group_rows, 1.25f, beta);
        device_synchronize();
        gemm_grouped_trans_a(ac, b2c, c2c, group_rows, 1.25f, beta);
        EXPECT_LT(relative_error(c2, c2c), tol);
      }
    }
  }
}

TEST_P(GemmGroupedGpu, ManyQueuedCallsAndGrowingGroupCountsStayCorrect) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  const std::int64_t k = 64, n = 48;
  // 10 calls (more than the ring has slots) queued back to back, the last ones with more groups
  // than any earlier call, so the pointer arrays grow while earlier GEMMs may still be queued.
  std::vector<std::vector<std::int64_t>> layouts;
  for (int call = 0; call < 10; ++call) {
    const int groups = call < 7 ? 3 + call : 70 + call;
    std::vector<std::int64_t> rows(static_cast<std::size_t>(groups));
    for (int g = 0; g < groups; ++g) rows[std::size_t(g)] = (g * 7 + call * 3) % 11;  // includes zeros
    layouts.push_back(rows);
  }
  std::vector<OwnedTensor> as, bs, cs;
  for (std::size_t call = 0; call < layouts.size(); ++call) {
    const auto groups = std::int64_t(layouts[call].size());
    as.push_back(random_tensor({total(layouts[call]), k}, dt, Device::cuda, 400 + 3 * call));
    bs.push_back(random_tensor({groups, k, n}, dt, Device::cuda, 401 + 3 * call));
    cs.push_back(OwnedTensor({total(layouts[call]), n}, out_dt, Device::cuda));
    poison(cs.back());
  }
  for (std::size_t call = 0; call < layouts.size(); ++call) {
    gemm_grouped(as[call], bs[call], cs[call], layouts[call], false);
  }
  device_synchronize();
  for (std::size_t call = 0; call < layouts.size(); ++call) {
    SCOPED_TRACE(::testing::Message() << "call " << call);
    OwnedTensor ac = convert(as[call], DType::f64, Device::cpu), bc = convert(bs[call], DType::f64, Device::cpu);
    OwnedTensor cc({total(layouts[call]), n}, DType::f64, Device::cpu);
    gemm_grouped(ac, bc, cc, layouts[call], false);
    EXPECT_LT(relative_error(cs[call], cc), tolerance_for(out_dt));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmGroupedGpu,
                         ::testing::Values(GroupedCase{DType::f32, DType::f32}, GroupedCase{DType::bf16, DType::bf16},
                                           GroupedCase{DType::bf16, DType::f32}),
                         grouped_case_name);

}  // namespace
}  // namespace sy::test
