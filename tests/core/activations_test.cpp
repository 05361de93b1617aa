// Activation CPU references: GELU, ReLU and SwiGLU against hand-computed values, backward
// against finite differences, and the argument checks.
#include <cmath>
#include <string>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// Checks dx of a pointwise op (y = f(x), shape of x) against finite differences.
void expect_backward_matches_finite_differences(
    const Shape& x_shape, const Shape& y_shape,
    const std::function<void(const Tensor&, const Tensor&)>& forward,
    const std::function<void(const Tensor&, const Tensor&, const Tensor&)>& backward, std::uint64_t seed) {
  OwnedTensor x = random_tensor(x_shape, DType::f64, Device::cpu, seed);
  OwnedTensor dy = random_tensor(y_shape, DType::f64, Device::cpu, seed + 1);
  OwnedTensor y(y_shape, DType::f64, Device::cpu), dx(x_shape, DType::f64, Device::cpu);
  auto loss = [&] {
    forward(x, y);
    return weighted_sum(y, dy);
  };
  backward(x, dy, dx);
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(x, loss)), 1e-8);
}

TEST(Gelu, ForwardMatchesTanhApproximation) {
  OwnedTensor x({6}, DType::f64, Device::cpu), y({6}, DType::f64, Device::cpu);
  from_vector(x, {0, 1, -1, 2, 0.5, -3});
  gelu_forward(x, y);
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated independently in fp64.
  const std::vector<double> expected{0, 0.8411919906082768, -0.15880800939172324, 1.954597694087775,
                                     0.34571400982514394, -0.0036373920817729943};
  const std::vector<double> yv = to_vector(y);
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(yv[i], expected[i], 1e-15) << "x=" << to_vector(x)[i];
}

TEST(Gelu, BackwardMatchesFiniteDifferences) {
  expect_backward_matches_finite_differences(
      {7, 13}, {7, 13}, [](const Tensor& x, const Tensor& y) { gelu_forward(x, y); },
      [](const Tensor& x, const Tensor& dy, const Tensor& dx) { gelu_backward(x, dy, dx); }, 20);
}

TEST(Gelu, BackwardMayWriteOverItsGradientInput) {
  // dx aliasing dy gives what a separate dx gets (gemm_dgelu's unfused routes rely on it).
  OwnedTensor x = random_tensor({5, 9}, DType::bf16, Device::cpu, 40, 2.0f);
  OwnedTensor dy = random_tensor({5, 9}, DType::bf16, Device::cpu, 41);
  OwnedTensor dx({5, 9}, DType::bf16, Device::cpu);
  OwnedTensor in_place = convert(dy, DType::bf16, Device::cpu);
  gelu_backward(x, dy, dx);
  gelu_backward(x, in_place, in_place);
  EXPECT_EQ(to_vector(in_place), to_vector(dx));
}

TEST(Relu, BackwardMatchesFiniteDifferencesAwayFromZero) {
  // Normal draws land within the 1e-6 step of 0 with negligible probability.
  expect_backward_matches_finite_differences(
      {5, 11}, {5, 11}, [](const Tensor& x, const Tensor& y) { relu_forward(x, y); },
      [](const Tensor& x, const Tensor& dy, const Tensor& dx) { relu_backward(x, dy, dx); }, 22);
}

TEST(Relu, DerivativeAtZeroIsZero) {
  OwnedTensor x({5}, DType::f32, Device::cpu), dy({5}, DType::f32, Device::cpu);
  OwnedTensor y({5}, DType::f32, Device::cpu), dx({5}, DType::f32, Device::cpu);
  from_vector(x, {0.0, -0.0, 2.5, -2.5, 1e-30});
  from_vector(dy, {3, 3, 3, 3, 3});
  relu_forward(x, y);
  relu_backward(x, dy, dx);
  EXPECT_EQ(to_vector(y), (std::vector<double>{0, 0, 2.5, 0, double(1e-30f)}));
  EXPECT_EQ(to_vector(dx), (std::vector<double>{0, 0, 3, 0, 3}));
}

TEST(SwiGlu, ForwardIsSiluOfGateTimesUp) {
  // Two rows of [gate | up] with F = 2.
  OwnedTensor x({2, 4}, DType::f64, Device::cpu), y({2, 2}, DType::f64, Device::cpu);
  from_vector(x, {1, -2, 2, 0.5, 0, 3, 7, -1});
  swiglu_forward(x, y);
  // silu(g) = g / (1 + e^-g): silu(1) * 2, silu(-2) * 0.5, silu(0) * 7, silu(3) * -1.
  const std::vector<double> expected{1.4621171572600098, -0.11920292202211755, 0, -3 / (1 + std::exp(-3.0))};
  const std::vector<double> yv = to_vector(y);
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(yv[i], expected[i], 1e-15) << "i=" << i;
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  expect_backward_matches_finite_differences(
      {5, 14}, {5, 7}, [](const Tensor& x, const Tensor& y) { swiglu_forward(x, y); },
      [](const Tensor& x, const Tensor& dy, const Tensor& dx) { swiglu_backward(x, dy, dx); }, 24);
}

TEST(SwiGlu, RejectsOddWidth) {
  OwnedTensor x({3, 5}, DType::f32, Device::cpu), y({3, 2}, DType::f32, Device::cpu);
  expect_error([&] { swiglu_forward(x, y); }, "swiglu_forward: x must be [N, 2F] ([gate | up]), got f32[3, 5] cpu");
}

TEST(Gelu, RejectsMismatchedOutput) {
  OwnedTensor x({4, 6}, DType::f32, Device::cpu), y({4, 5}, DType::f32, Device::cpu);
  OwnedTensor dy({4, 6}, DType::bf16, Device::cpu), dx({4, 6}, DType::f32, Device::cpu);
  expect_error([&] { gelu_forward(x, y); }, "gelu_forward: y must have shape [4, 6], got f32[4, 5] cpu");
  expect_error([&] { gelu_backward(x, dy, dx); }, "gelu_backward: dy must be f32, got bf16[4, 6] cpu");
}

// The recomputing backward is the two ops it fuses, with dx over dy; y may not alias x or dy.
TEST(Activations, GeluBackwardRecomputeEqualsForwardAndBackward) {
  const Shape shape{4, 7};
  OwnedTensor x = random_tensor(shape, DType::f64, Device::cpu, 61, 2.0f);
  OwnedTensor dy = random_tensor(shape, DType::f64, Device::cpu, 62);
  OwnedTensor y(shape, DType::f64, Device::cpu), dx(shape, DType::f64, Device::cpu), y_ref(shape, DType::f64, Device::cpu);
  gelu_forward(x, y_ref);
  gelu_backward(x, dy, dx);
  gelu_backward_recompute(x, dy, dy, y);
  EXPECT_EQ(to_vector(y), to_vector(y_ref));
  EXPECT_EQ(to_vector(dy), to_vector(dx));
  expect_error([&] { gelu_backward_recompute(x, dy, dx, dy); }, "gelu_backward_recompute: y must not alias x or dy");
}

}  // namespace
}  // namespace sy::test
