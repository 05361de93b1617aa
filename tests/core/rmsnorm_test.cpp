// RMSNorm CPU reference: forward against a direct formula, backward against finite differences.
#include <cmath>

#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr float kEps = 1e-5f;

TEST(RmsNorm, ForwardNormalisesEachRowToUnitRms) {
  OwnedTensor x = random_tensor({5, 13}, DType::f64, Device::cpu, 1);
  OwnedTensor w = random_tensor({13}, DType::f64, Device::cpu, 2);
  OwnedTensor y({5, 13}, DType::f64, Device::cpu), rstd({5}, DType::f32, Device::cpu);
  rmsnorm_forward(x, w, y, rstd, kEps);
  std::vector<double> xv = to_vector(x), wv = to_vector(w), yv = to_vector(y), rv = to_vector(rstd);
  for (int n = 0; n < 5; ++n) {
    double ms = 0;
    for (int c = 0; c < 13; ++c) ms += xv[n * 13 + c] * xv[n * 13 + c] / 13;
    const double r = 1 / std::sqrt(ms + kEps);
    EXPECT_NEAR(rv[n], r, 1e-6 * r);
    for (int c = 0; c < 13; ++c) EXPECT_NEAR(yv[n * 13 + c], xv[n * 13 + c] * r * wv[c], 1e-12);
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const Shape shape{7, 19};  // odd sizes
  OwnedTensor x = random_tensor(shape, DType::f64, Device::cpu, 3);
  OwnedTensor w = random_tensor({19}, DType::f64, Device::cpu, 4);
  OwnedTensor dy = random_tensor(shape, DType::f64, Device::cpu, 5);
  OwnedTensor y(shape, DType::f64, Device::cpu), rstd({7}, DType::f32, Device::cpu);
  auto loss = [&] {
    rmsnorm_forward(x, w, y, rstd, kEps);
    return weighted_sum(y, dy);
  };
  loss();
  OwnedTensor dx(shape, DType::f64, Device::cpu), dw({19}, DType::f32, Device::cpu);
  poison(dw);  // overwritten, never read
  rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::overwrite);
  // rstd is saved in f32, so the analytic gradient carries ~1e-7 relative error.
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(x, loss)), 1e-6);
  EXPECT_LT(relative_error(to_vector(dw), numeric_gradient(w, loss)), 1e-6);
}

// Overwrite stores the gradient whatever dweight held (NaN here); accumulate adds to it; both
// forms, with the residual form's input gradient added in either mode.
TEST(RmsNorm, WeightGradientOverwritesThenAccumulates) {
  OwnedTensor x = random_tensor({3, 8}, DType::f32, Device::cpu, 6);
  OwnedTensor w = random_tensor({8}, DType::f32, Device::cpu, 7);
  OwnedTensor dy = random_tensor({3, 8}, DType::f32, Device::cpu, 8);
  OwnedTensor y({3, 8}, DType::f32, Device::cpu), rstd({3}, DType::f32, Device::cpu), dx({3, 8}, DType::f32, Device::cpu);
  rmsnorm_forward(x, w, y, rstd, kEps);
  OwnedTensor reference = zeros({8}, DType::f32, Device::cpu);
  rmsnorm_backward(x, w, rstd, dy, dx, reference, GradMode::accumulate);  // onto zeros
  const std::vector<double> once = to_vector(reference);
  for (bool residual : {false, true}) {
    SCOPED_TRACE(residual ? "rmsnorm_backward_residual" : "rmsnorm_backward");
    OwnedTensor dres = zeros({3, 8}, DType::f32, Device::cpu), dw({8}, DType::f32, Device::cpu);
    auto backward = [&](GradMode mode) {
      if (residual) {
        rmsnorm_backward_residual(x, w, rstd, dy, dres, dw, mode);
      } else {
        rmsnorm_backward(x, w, rstd, dy, dx, dw, mode);
      }
    };
    poison(dw);
    backward(GradMode::overwrite);
    EXPECT_EQ(to_vector(dw), once);
    backward(GradMode::accumulate);
    const std::vector<double> twice = to_vector(dw);
    for (std::size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-5 * std::abs(once[i]) + 1e-7);
    backward(GradMode::overwrite);  // a new step: the sum of the last one is gone
    EXPECT_EQ(to_vector(dw), once);
    if (residual) {  // the residual stream's gradient took dx three times, whatever the mode
      const std::vector<double> dres3 = to_vector(dres), dx1 = to_vector(dx);
      for (std::size_t i = 0; i < dx1.size(); ++i) EXPECT_NEAR(dres3[i], 3 * dx1[i], 1e-5 * std::abs(dx1[i]) + 1e-6);
    }
  }
}

// No rows, no terms: an overwritten weight gradient is zero, an accumulated one unchanged.
TEST(RmsNorm, WithoutRowsOverwriteWritesZeros) {
  OwnedTensor x({0, 6}, DType::f32, Device::cpu), dy({0, 6}, DType::f32, Device::cpu), dx({0, 6}, DType::f32, Device::cpu);
  OwnedTensor w = random_tensor({6}, DType::f32, Device::cpu, 9), rstd({0}, DType::f32, Device::cpu);
  OwnedTensor dw({6}, DType::f32, Device::cpu);
  poison(dw);
  rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::overwrite);
  EXPECT_EQ(to_vector(dw), std::vector<double>(6, 0.0));
  OwnedTensor kept = random_tensor({6}, DType::f32, Device::cpu, 10);
  const std::vector<double> before = to_vector(kept);
  rmsnorm_backward_residual(x, w, rstd, dy, dx, kept, GradMode::accumulate);
  EXPECT_EQ(to_vector(kept), before);
}

// The fused residual forms are exactly the compositions they replace.
TEST(RmsNorm, AddRmsNormEqualsAddThenNorm) {
  for (DType dt : {DType::f64, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    OwnedTensor a = random_tensor({6, 11}, dt, Device::cpu, 20), b = random_tensor({6, 11}, dt, Device::cpu, 21);
    OwnedTensor w = random_tensor({11}, dt, Device::cpu, 22);
    OwnedTensor sum({6, 11}, dt, Device::cpu), y({6, 11}, dt, Device::cpu), rstd({6}, DType::f32, Device::cpu);
    OwnedTensor sum_ref({6, 11}, dt, Device::cpu), y_ref({6, 11}, dt, Device::cpu);
    OwnedTensor rstd_ref({6}, DType::f32, Device::cpu);
    add_rmsnorm_forward(a, b, sum, w, y, rstd, kEps);
    add(a, b, sum_ref);
    rmsnorm_forward(sum_ref, w, y_ref, rstd_ref, kEps);
    EXPECT_EQ(to_vector(sum), to_vector(sum_ref));
    EXPECT_EQ(to_vector(y), to_vector(y_ref));
    EXPECT_EQ(to_vector(rstd), to_vector(rstd_ref));
  }
}

TEST(RmsNorm, BackwardResidualAddsTheInputGradient) {
  OwnedTensor x = random_tensor({5, 9}, DType::f64, Device::cpu, 23);
  OwnedTensor w = random_tensor({9}, DType::f64, Device::cpu, 24);
  OwnedTensor dy = random_tensor({5, 9}, DType::f64, Device::cpu, 25);
  OwnedTensor y({5, 9}, DType::f64, Device::cpu), rstd({5}, DType::f32, Device::cpu);
  rmsnorm_forward(x, w, y, rstd, kEps);
  OwnedTensor dres = random_tensor({5, 9}, DType::f64, Device::cpu, 26);
  const std::vector<double> before = to_vector(dres);
  OwnedTensor dw = zeros({9}, DType::f32, Device::cpu), dw_ref = zeros({9}, DType::f32, Device::cpu);
  OwnedTensor dx({5, 9}, DType::f64, Device::cpu);
  rmsnorm_backward_residual(x, w, rstd, dy, dres, dw, GradMode::accumulate);
  rmsnorm_backward(x, w, rstd, dy, dx, dw_ref, GradMode::accumulate);
  const std::vector<double> after = to_vector(dres), dxv = to_vector(dx);
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_NEAR(after[i], before[i] + dxv[i], 1e-14) << i;
  EXPECT_EQ(to_vector(dw), to_vector(dw_ref));
}

TEST(RmsNorm, AddRmsNormSumMayAliasEitherInput) {
  OwnedTensor a = random_tensor({3, 10}, DType::bf16, Device::cpu, 27);
  OwnedTensor b = random_tensor({3, 10}, DType::bf16, Device::cpu, 28);
  OwnedTensor w = random_tensor({10}, DType::bf16, Device::cpu, 29);
  OwnedTensor sum({3, 10}, DType::bf16, Device::cpu), y({3, 10}, DType::bf16, Device::cpu);
  OwnedTensor rstd({3}, DType::f32, Device::cpu);
  add_rmsnorm_forward(a, b, sum, w, y, rstd, kEps);
  for (bool into_b : {false, true}) {
    OwnedTensor a2 = convert(a, DType::bf16, Device::cpu), b2 = convert(b, DType::bf16, Device::cpu);
    OwnedTensor y2({3, 10}, DType::bf16, Device::cpu), rstd2({3}, DType::f32, Device::cpu);
    const Tensor& target = into_b ? b2.view() : a2.view();
    add_rmsnorm_forward(a2, b2, target, w, y2, rstd2, kEps);
    EXPECT_EQ(to_vector(target), to_vector(sum)) << (into_b ? "into b" : "into a");
    EXPECT_EQ(to_vector(y2), to_vector(y));
  }
}

TEST(RmsNorm, RejectsMismatchedWeight) {
  OwnedTensor x({4, 6}, DType::f32, Device::cpu), w({5}, DType::f32, Device::cpu);
  OwnedTensor y({4, 6}, DType::f32, Device::cpu), rstd({4}, DType::f32, Device::cpu);
  try {
    rmsnorm_forward(x, w, y, rstd, kEps);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rmsnorm_forward: weight must have shape [6], got f32[5] cpu"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::test
