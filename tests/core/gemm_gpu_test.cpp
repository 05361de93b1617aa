// GEMM on CUDA (cuBLAS) against the CPU reference on fresh random inputs: f32, bf16, and bf16
// operands with an f32 output; every transpose; strided rows; batched with a shared operand.
#include "tests/testing.h"

namespace sy::test {
namespace {

// f32: fp32 accumulation over K <= 300 terms, no TF32 (1e-5). bf16 output: rounded to 8 bits (1e-2).
double tolerance_for(DType output) { return output == DType::f32 ? 1e-5 : 1e-2; }

Shape stored_shape(std::int64_t rows, std::int64_t cols, bool trans) {
  return trans ? Shape{cols, rows} : Shape{rows, cols};
}

struct GemmCase {
  DType operands, output;
};

void PrintTo(const GemmCase& c, std::ostream* os) { *os << dtype_name(c.operands) << " -> " << dtype_name(c.output); }

std::string gemm_case_name(const ::testing::TestParamInfo<GemmCase>& param_info) {
  return std::string(dtype_name(param_info.param.operands)) + "_to_" + dtype_name(param_info.param.output);
}

class GemmGpu : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmGpu, MatchesCpuReferenceForEveryTranspose) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  const double tol = tolerance_for(out_dt);
  std::uint64_t seed = 200;
  for (auto [m, n, k] : {std::tuple{17, 9, 33}, std::tuple{128, 96, 64}, std::tuple{257, 129, 300}}) {
    for (bool trans_a : {false, true}) {
      for (bool trans_b : {false, true}) {
        for (float beta : {0.0f, 0.5f}) {
          SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k << " trans_a " << trans_a << " trans_b "
                                            << trans_b << " beta " << beta);
          seed += 3;
          OwnedTensor a = random_tensor(stored_shape(m, k, trans_a), dt, Device::cuda, seed);
          OwnedTensor b = random_tensor(stored_shape(k, n, trans_b), dt, Device::cuda, seed + 1);
          OwnedTensor c = random_tensor({m, n}, out_dt, Device::cuda, seed + 2);
          if (beta == 0.0f) poison(c);  // beta = 0 must not read c
          // The reference runs in f64 on the same (already rounded) inputs.
          OwnedTensor ac = convert(a, DType::f64, Device::cpu), bc = convert(b, DType::f64, Device::cpu);
          OwnedTensor cc =
              beta == 0.0f ? OwnedTensor({m, n}, DType::f64, Device::cpu) : convert(c, DType::f64, Device::cpu);

          gemm(a, b, c, trans_a, trans_b, 1.25f, beta);
          device_synchronize();
          gemm(ac, bc, cc, trans_a, trans_b, 1.25f, beta);
          EXPECT_LT(relative_error(c, cc), tol);
        }
      }
    }
  }
}

TEST_P(GemmGpu, StridedRowsWriteOnlyTheView) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  // a [M, K] and c [M, N] are column slices of wider matrices; c's other columns must survive.
  const std::int64_t m = 33, n = 20, k = 45, width = 64, offset = 5;
  OwnedTensor a_wide = random_tensor({m, width}, dt, Device::cuda, 300);
  OwnedTensor b = random_tensor({k, n}, dt, Device::cuda, 301);
  OwnedTensor c_wide = random_tensor({m, width}, out_dt, Device::cuda, 302);
  OwnedTensor a_wide_c = convert(a_wide, DType::f64, Device::cpu), bc = convert(b, DType::f64, Device::cpu);
  OwnedTensor c_wide_c = convert(c_wide, DType::f64, Device::cpu);

  gemm(a_wide.view().as_strided({m, k}, {width, 1}, offset), b, c_wide.view().as_strided({m, n}, {width, 1}, offset),
       false, false, 1.0f, 0.0f);
  device_synchronize();
  gemm(a_wide_c.view().as_strided({m, k}, {width, 1}, offset), bc,
       c_wide_c.view().as_strided({m, n}, {width, 1}, offset), false, false, 1.0f, 0.0f);
  // Whole buffers: the view must match and the columns outside it must be untouched.
  EXPECT_LT(relative_error(c_wide, c_wide_c), tolerance_for(out_dt));
}

TEST_P(GemmGpu, BatchedWithSharedOperandMatchesCpu) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  const std::int64_t batch = 5, m = 37, n = 24, k = 70;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << trans_a << " trans_b " << trans_b);
      const Shape a_item = stored_shape(m, k, trans_a), b_item = stored_shape(k, n, trans_b);
      const std::uint64_t seed = 400 + 10 * trans_a + 20 * trans_b;
      OwnedTensor a = random_tensor({batch, a_item[0], a_item[1]}, dt, Device::cuda, seed);
      OwnedTensor weight = random_tensor(b_item, dt, Device::cuda, seed + 1);  // shared: batch stride 0
      OwnedTensor c({batch, m, n}, out_dt, Device::cuda);
      poison(c);
      OwnedTensor ac = convert(a, DType::f64, Device::cpu), wc = convert(weight, DType::f64, Device::cpu);
      OwnedTensor cc({batch, m, n}, DType::f64, Device::cpu);
      const Shape shared_shape{batch, b_item[0], b_item[1]}, shared_strides{0, b_item[1], 1};

      gemm_batched(a, weight.view().as_strided(shared_shape, shared_strides), c, trans_a, trans_b, 0.75f, 0.0f);
      device_synchronize();
      gemm_batched(ac, wc.view().as_strided(shared_shape, shared_strides), cc, trans_a, trans_b, 0.75f, 0.0f);
      EXPECT_LT(relative_error(c, cc), tolerance_for(out_dt));
    }
  }
}

// A weight gradient over no rows (K = 0): at beta = 0 (GradMode::overwrite) cuBLAS must write
// zeros over NaN, as the CPU reference does; at beta = 1 c stays as it was. Plain and batched.
TEST_P(GemmGpu, EmptyReductionWritesZerosAtBetaZero) {
  SY_REQUIRE_GPU();
  const auto [dt, out_dt] = GetParam();
  // Empty operands as the arena hands them out: a real address, no rows.
  OwnedTensor storage({1, 64}, dt, Device::cuda), c({40, 24}, out_dt, Device::cuda);
  const Tensor a = storage.view().as_strided({0, 40}, {40, 1}), b = storage.view().as_strided({0, 24}, {24, 1});
  poison(c);
  gemm(a, b, c, true, false, 1.0f, 0.0f);
  OwnedTensor kept = random_tensor({40, 24}, out_dt, Device::cuda, 40);
  const std::vector<double> before = to_vector(kept);
  gemm(a, b, kept, true, false, 1.0f, 1.0f);
  const Tensor ab = storage.view().as_strided({3, 0, 40}, {0, 40, 1});
  const Tensor bb = storage.view().as_strided({3, 0, 24}, {0, 24, 1});
  OwnedTensor cb({3, 40, 24}, out_dt, Device::cuda);
  poison(cb);
  gemm_batched(ab, bb, cb, true, false, 1.0f, 0.0f);
  device_synchronize();
  EXPECT_EQ(to_vector(c), std::vector<double>(40 * 24, 0.0));
  EXPECT_EQ(to_vector(kept), before);
  EXPECT_EQ(to_vector(cb), std::vector<double>(3 * 40 * 24, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmGpu,
                         ::testing::Values(GemmCase{DType::f32, DType::f32}, GemmCase{DType::bf16, DType::bf16},
                                           GemmCase{DType::bf16, DType::f32}),
                         gemm_case_name);

}  // namespace
}  // namespace sy::test
