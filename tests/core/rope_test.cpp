// RoPE CPU reference: a hand-computed rotation, finite-difference backward, norm preservation,
// in-place use, and the head-dim check.
#include <cmath>
#include <string>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr float kTheta = 10000.0f;

TEST(Rope, ForwardMatchesHandComputedRotation) {
  // D = 4: pairs (0, 2) at frequency 1 and (1, 3) at 10000^(-1/2) = 0.01. Row t = 0 is unrotated.
  OwnedTensor x({1, 1, 2, 4}, DType::f64, Device::cpu), y({1, 1, 2, 4}, DType::f64, Device::cpu);
  from_vector(x, {5, 6, 7, 8, 1, 2, 3, 4});
  rope_forward(x, y, kTheta);
  const std::vector<double> expected{5, 6, 7, 8,
                                     1 * std::cos(1.0) - 3 * std::sin(1.0), 2 * std::cos(0.01) - 4 * std::sin(0.01),
                                     1 * std::sin(1.0) + 3 * std::cos(1.0), 2 * std::sin(0.01) + 4 * std::cos(0.01)};
  const std::vector<double> yv = to_vector(y);
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(yv[i], expected[i], 1e-14) << "i=" << i;
  // The same numbers written out, so the test does not share the formula with the code.
  EXPECT_NEAR(yv[4], -1.9841106485555495, 1e-14);
  EXPECT_NEAR(yv[6], 2.4623779024123156, 1e-14);
  EXPECT_NEAR(yv[5], 1.959900667496664, 1e-14);
  EXPECT_NEAR(yv[7], 4.019799668334994, 1e-14);
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  const Shape shape{2, 3, 5, 6};  // odd B*H*T, three pairs per row
  OwnedTensor x = random_tensor(shape, DType::f64, Device::cpu, 10);
  OwnedTensor w = random_tensor(shape, DType::f64, Device::cpu, 11);
  OwnedTensor y(shape, DType::f64, Device::cpu), dx(shape, DType::f64, Device::cpu);
  auto loss = [&] {
    rope_forward(x, y, kTheta);
    return weighted_sum(y, w);
  };
  rope_backward(w, dx, kTheta);
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(x, loss)), 1e-8);
}

TEST(Rope, PreservesTheNormOfEveryPair) {
  const Shape shape{2, 2, 37, 8};  // T not a multiple of 32
  OwnedTensor x = random_tensor(shape, DType::f64, Device::cpu, 12);
  OwnedTensor y(shape, DType::f64, Device::cpu);
  rope_forward(x, y, kTheta);
  const std::vector<double> xv = to_vector(x), yv = to_vector(y);
  for (std::size_t row = 0; row < xv.size() / 8; ++row) {
    for (std::size_t i = 0; i < 4; ++i) {
      const std::size_t a = row * 8 + i, b = a + 4;
      EXPECT_NEAR(std::hypot(yv[a], yv[b]), std::hypot(xv[a], xv[b]), 1e-12) << "row " << row << ", pair " << i;
    }
  }
}

TEST(Rope, BackwardUndoesForward) {
  const Shape shape{1, 3, 37, 16};
  OwnedTensor x = random_tensor(shape, DType::f64, Device::cpu, 13);
  OwnedTensor y(shape, DType::f64, Device::cpu), back(shape, DType::f64, Device::cpu);
  rope_forward(x, y, kTheta);
  rope_backward(y, back, kTheta);
  EXPECT_LT(relative_error(back, x), 1e-14);
  EXPECT_GT(relative_error(y, x), 0.1);  // and the rotation did something
}

TEST(Rope, InPlaceEqualsOutOfPlace) {
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Shape shape{2, 2, 33, 10};
    OwnedTensor x = random_tensor(shape, dt, Device::cpu, 14);
    OwnedTensor y(shape, dt, Device::cpu), dx(shape, dt, Device::cpu);
    rope_forward(x, y, kTheta);
    rope_backward(x, dx, kTheta);
    OwnedTensor inplace = convert(x, dt, Device::cpu);
    rope_forward(inplace, inplace, kTheta);
    EXPECT_EQ(to_vector(inplace), to_vector(y));
    OwnedTensor inplace_back = convert(x, dt, Device::cpu);
    rope_backward(inplace_back, inplace_back, kTheta);
    EXPECT_EQ(to_vector(inplace_back), to_vector(dx));
  }
}

// RoPE in place on the q and k heads inside token-major qkv rows (the model's layout) equals
// RoPE on head-major copies; the v columns are untouched.
TEST(Rope, InPlaceOnTokenMajorHeadsMatchesHeadMajorCopies) {
  const std::int64_t batch = 2, heads = 3, kv_heads = 1, seq = 5, dim = 4;
  const std::int64_t cols = (heads + 2 * kv_heads) * dim;
  OwnedTensor qkv = random_tensor({batch * seq, cols}, DType::f64, Device::cpu, 70);
  OwnedTensor q({batch, heads, seq, dim}, DType::f64, Device::cpu);
  OwnedTensor k({batch, kv_heads, seq, dim}, DType::f64, Device::cpu);
  OwnedTensor v({batch, kv_heads, seq, dim}, DType::f64, Device::cpu);
  split_qkv_heads(qkv, q, k, v);
  rope_forward(q, q, kTheta);
  rope_forward(k, k, kTheta);
  OwnedTensor expected({batch * seq, cols}, DType::f64, Device::cpu);
  merge_qkv_heads(q, k, v, expected);

  const Tensor qk = qkv.view().as_strided({batch, heads + kv_heads, seq, dim}, {seq * cols, dim, cols, 1});
  rope_forward(qk, qk, kTheta);
  EXPECT_EQ(to_vector(qkv), to_vector(expected));
  rope_backward(qk, qk, kTheta);  // and back, to rounding
  OwnedTensor original = random_tensor({batch * seq, cols}, DType::f64, Device::cpu, 70);
  EXPECT_LT(relative_error(qkv, original), 1e-14);
}

TEST(Rope, RejectsOutputWithOtherStrides) {
  OwnedTensor x({1, 2, 3, 4}, DType::f64, Device::cpu), buffer({1, 3, 2, 4}, DType::f64, Device::cpu);
  const Tensor y = buffer.view().as_strided({1, 2, 3, 4}, {24, 4, 8, 1});
  expect_error([&] { rope_forward(x, y, kTheta); },
               "rope_forward: y must have the strides of x, they differ on axis 1 (4 vs 12)");
}

TEST(Rope, RejectsOddHeadDim) {
  OwnedTensor x({1, 2, 3, 5}, DType::f32, Device::cpu), y({1, 2, 3, 5}, DType::f32, Device::cpu);
  try {
    rope_forward(x, y, kTheta);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_forward: x must be [B, H, T, D] with D even, got f32[1, 2, 3, 5] cpu"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::test
