// GEMM with a GELU epilogue on the CPU: bit-for-bit the composition of the separate ops (gemm or
// gemm_batched, then gelu_forward / gelu_backward), a naive loop in double, gemm_dgelu as the
// finite-difference gradient in fp64, and the argument checks.
#include <cmath>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

double gelu(double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }

// Shapes of one call; batch 0 is a plain (2-D) call.
struct Case {
  DType dtype;
  std::int64_t batch;
  bool trans_b;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << (c.batch ? " batched" : " plain") << (c.trans_b ? " trans_b" : "");
}

std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  const Case& c = param_info.param;
  return std::string(dtype_name(c.dtype)) + (c.batch ? "_batched" : "_plain") + (c.trans_b ? "_NT" : "_NN");
}

constexpr std::int64_t kM = 7, kK = 9, kN = 6;

// [batch, rows, cols], or [rows, cols] for a plain call.
Shape shape_of(std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  return batch ? Shape{batch, rows, cols} : Shape{rows, cols};
}
Shape b_shape(const Case& c) { return c.trans_b ? shape_of(c.batch, kN, kK) : shape_of(c.batch, kK, kN); }

// a @ op(b) by the existing GEMM ops, into c.
void separate_product(const Case& c, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (c.batch) {
    gemm_batched(a, b, out, false, c.trans_b);
  } else {
    gemm(a, b, out, false, c.trans_b);
  }
}

class GemmGeluCpu : public ::testing::TestWithParam<Case> {};

TEST_P(GemmGeluCpu, ForwardIsGemmThenGeluBitForBit) {
  const Case c = GetParam();
  OwnedTensor a = random_tensor(shape_of(c.batch, kM, kK), c.dtype, Device::cpu, 100 + c.batch + c.trans_b);
  OwnedTensor b = random_tensor(b_shape(c), c.dtype, Device::cpu, 110 + c.batch + c.trans_b, 0.4f);
  const Shape out_shape = shape_of(c.batch, kM, kN);
  OwnedTensor pre(out_shape, c.dtype, Device::cpu), act(out_shape, c.dtype, Device::cpu);
  OwnedTensor pre_ref(out_shape, c.dtype, Device::cpu), act_ref(out_shape, c.dtype, Device::cpu);
  poison(pre);
  poison(act);

  gemm_gelu(a, b, pre, act, c.trans_b);
  separate_product(c, a, b, pre_ref);
  gelu_forward(pre_ref, act_ref);
  EXPECT_EQ(to_vector(pre), to_vector(pre_ref));
  EXPECT_EQ(to_vector(act), to_vector(act_ref));
}

TEST_P(GemmGeluCpu, BackwardIsGemmThenGeluBackwardBitForBit) {
  const Case c = GetParam();
  OwnedTensor a = random_tensor(shape_of(c.batch, kM, kK), c.dtype, Device::cpu, 120 + c.batch + c.trans_b);
  OwnedTensor b = random_tensor(b_shape(c), c.dtype, Device::cpu, 130 + c.batch + c.trans_b, 0.4f);
  const Shape out_shape = shape_of(c.batch, kM, kN);
  OwnedTensor pre = random_tensor(out_shape, c.dtype, Device::cpu, 140 + c.batch + c.trans_b);
  OwnedTensor dpre(out_shape, c.dtype, Device::cpu);
  OwnedTensor dact_ref(out_shape, c.dtype, Device::cpu), dpre_ref(out_shape, c.dtype, Device::cpu);
  poison(dpre);

  gemm_dgelu(a, b, pre, dpre, c.trans_b);
  separate_product(c, a, b, dact_ref);
  gelu_backward(pre, dact_ref, dpre_ref);
  EXPECT_EQ(to_vector(dpre), to_vector(dpre_ref));
}

INSTANTIATE_TEST_SUITE_P(Layouts, GemmGeluCpu,
                         ::testing::Values(Case{DType::f32, 0, false}, Case{DType::f32, 0, true},
                                           Case{DType::f32, 3, false}, Case{DType::f32, 3, true},
                                           Case{DType::bf16, 0, false}, Case{DType::bf16, 0, true},
                                           Case{DType::bf16, 3, false}, Case{DType::bf16, 3, true}),
                         case_name);

TEST(GemmGelu, MatchesNaiveLoopInDouble) {
  // Batched, b stored transposed ([batch, N, K]), and an a with strided rows (a column slice).
  const std::int64_t batch = 2, m = 5, k = 4, n = 3, width = 6;
  OwnedTensor a_wide = random_tensor({batch, m, width}, DType::f64, Device::cpu, 150);
  OwnedTensor b = random_tensor({batch, n, k}, DType::f64, Device::cpu, 151);
  OwnedTensor pre({batch, m, n}, DType::f64, Device::cpu), act({batch, m, n}, DType::f64, Device::cpu);
  const Tensor a = a_wide.view().as_strided({batch, m, k}, {m * width, width, 1}, 1);
  gemm_gelu(a, b, pre, act, true);

  const std::vector<double> av = to_vector(a_wide), bv = to_vector(b), prev = to_vector(pre), actv = to_vector(act);
  for (std::int64_t item = 0; item < batch; ++item) {
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        double sum = 0;
        for (std::int64_t p = 0; p < k; ++p)
          sum += av[std::size_t((item * m + i) * width + 1 + p)] * bv[std::size_t((item * n + j) * k + p)];
        const std::size_t at = std::size_t((item * m + i) * n + j);
        EXPECT_NEAR(prev[at], sum, 1e-14) << item << ", " << i << ", " << j;
        EXPECT_NEAR(actv[at], gelu(sum), 1e-14) << item << ", " << i << ", " << j;
      }
    }
  }
}

// An FFN's first layer and its output projection: loss = sum(dy * (gelu(pre) @ w_out)). Its
// gradient with respect to pre is gelu'(pre) * (dy @ w_out^T): gemm_dgelu(dy, w_out, pre, trans_b).
TEST(GemmDgelu, IsTheGradientWithRespectToThePreActivation) {
  const std::int64_t batch = 2, m = 3, f = 5, d = 4;
  OwnedTensor pre = random_tensor({batch, m, f}, DType::f64, Device::cpu, 160);
  OwnedTensor w_out = random_tensor({batch, f, d}, DType::f64, Device::cpu, 161);
  OwnedTensor dy = random_tensor({batch, m, d}, DType::f64, Device::cpu, 162);
  OwnedTensor act({batch, m, f}, DType::f64, Device::cpu), y({batch, m, d}, DType::f64, Device::cpu);
  OwnedTensor dpre({batch, m, f}, DType::f64, Device::cpu);
  auto loss = [&] {
    gelu_forward(pre, act);
    gemm_batched(act, w_out, y, false, false);
    return weighted_sum(y, dy);
  };
  gemm_dgelu(dy, w_out, pre, dpre, true);
  EXPECT_LT(relative_error(to_vector(dpre), numeric_gradient(pre, loss)), 1e-8);
}

// The same through both ops: x -> gemm_gelu -> @ w_out. dx = gemm_dgelu(dy, w_out, pre) @ w_in^T.
TEST(GemmDgelu, ChainsWithGemmGeluToTheInputGradient) {
  const std::int64_t m = 4, d = 3, f = 6;
  OwnedTensor x = random_tensor({m, d}, DType::f64, Device::cpu, 170);
  OwnedTensor w_in = random_tensor({d, f}, DType::f64, Device::cpu, 171);
  OwnedTensor w_out = random_tensor({f, d}, DType::f64, Device::cpu, 172);
  OwnedTensor dy = random_tensor({m, d}, DType::f64, Device::cpu, 173);
  OwnedTensor pre({m, f}, DType::f64, Device::cpu), act({m, f}, DType::f64, Device::cpu);
  OwnedTensor y({m, d}, DType::f64, Device::cpu), dpre({m, f}, DType::f64, Device::cpu);
  OwnedTensor dx({m, d}, DType::f64, Device::cpu);
  auto loss = [&] {
    gemm_gelu(x, w_in, pre, act, false);
    gemm(act, w_out, y, false, false);
    return weighted_sum(y, dy);
  };
  loss();
  gemm_dgelu(dy, w_out, pre, dpre, true);
  gemm(dpre, w_in, dx, false, true);
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(x, loss)), 1e-8);
}

TEST(GemmGelu, IsNeverFusedOnTheCpu) {
  OwnedTensor a = random_tensor({4, 8}, DType::bf16, Device::cpu, 180);
  OwnedTensor b = random_tensor({8, 16}, DType::bf16, Device::cpu, 181);
  OwnedTensor pre({4, 16}, DType::bf16, Device::cpu), act({4, 16}, DType::bf16, Device::cpu);
  EXPECT_FALSE(gemm_gelu_fused(GeluEpilogue::forward, a, b, pre, act, false));
  EXPECT_FALSE(gemm_gelu_fused(GeluEpilogue::backward, a, b, pre, act, false));
}

TEST(GemmGelu, RejectsMismatchedInnerDimensions) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({5, 6}, DType::f32, Device::cpu);
  OwnedTensor pre({4, 6}, DType::f32, Device::cpu), act({4, 6}, DType::f32, Device::cpu);
  expect_error([&] { gemm_gelu(a, b, pre, act, false); },
               "gemm_gelu: inner dimensions differ: op(a) is [4, 3], op(b) is [5, 6]");
}

TEST(GemmGelu, RejectsActOfAnotherShape) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({3, 5}, DType::f32, Device::cpu);
  OwnedTensor pre({4, 5}, DType::f32, Device::cpu), act({4, 6}, DType::f32, Device::cpu);
  expect_error([&] { gemm_gelu(a, b, pre, act, false); }, "gemm_gelu: act must have shape [4, 5], got f32[4, 6] cpu");
}

TEST(GemmGelu, RejectsPreOfAnotherShape) {
  OwnedTensor a({2, 4, 3}, DType::f32, Device::cpu), b({2, 5, 3}, DType::f32, Device::cpu);
  OwnedTensor pre({2, 4, 3}, DType::f32, Device::cpu), act({2, 4, 5}, DType::f32, Device::cpu);
  expect_error([&] { gemm_gelu(a, b, pre, act, true); },
               "gemm_gelu: pre must have shape [2, 4, 5], got f32[2, 4, 3] cpu");
}

TEST(GemmGelu, RejectsActWrittenOverPre) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({3, 5}, DType::f32, Device::cpu);
  OwnedTensor pre({4, 5}, DType::f32, Device::cpu);
  expect_error([&] { gemm_gelu(a, b, pre, pre, false); }, "gemm_gelu: pre and act must be different buffers");
}

TEST(GemmGelu, RejectsFourDimensionalInput) {
  OwnedTensor a({1, 2, 4, 3}, DType::f32, Device::cpu), b({3, 5}, DType::f32, Device::cpu);
  OwnedTensor pre({4, 5}, DType::f32, Device::cpu), act({4, 5}, DType::f32, Device::cpu);
  expect_error([&] { gemm_gelu(a, b, pre, act, false); },
               "gemm_gelu: a must be [M, K] or [batch, M, K], got f32[1, 2, 4, 3] cpu");
}

TEST(GemmDgelu, RejectsPreOfAnotherDtype) {
  // gemm would accept an f32 output for bf16 operands; pre is an input read in a's dtype.
  OwnedTensor a({4, 3}, DType::bf16, Device::cpu), b({5, 3}, DType::bf16, Device::cpu);
  OwnedTensor pre({4, 5}, DType::f32, Device::cpu), dpre({4, 5}, DType::bf16, Device::cpu);
  expect_error([&] { gemm_dgelu(a, b, pre, dpre, true); }, "gemm_dgelu: pre must be bf16, got f32[4, 5] cpu");
}

TEST(GemmDgelu, RejectsStridedDpre) {
  OwnedTensor a({4, 3}, DType::f32, Device::cpu), b({3, 5}, DType::f32, Device::cpu);
  OwnedTensor pre({4, 5}, DType::f32, Device::cpu), dpre_wide({4, 8}, DType::f32, Device::cpu);
  expect_error([&] { gemm_dgelu(a, b, pre, dpre_wide.view().as_strided({4, 5}, {8, 1}), false); },
               "gemm_dgelu: dpre must be contiguous, got f32[4, 5] cpu");
}

}  // namespace
}  // namespace sy::test
