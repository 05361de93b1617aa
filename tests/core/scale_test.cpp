// scale CPU reference: out = factor * x, in place or not, and the shape check.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(Scale, MultipliesEveryElement) {
  OwnedTensor x = random_tensor({7, 13}, DType::f64, Device::cpu, 20);
  OwnedTensor out({7, 13}, DType::f64, Device::cpu);
  poison(out);
  scale(x, 0.375f, out);
  const std::vector<double> xv = to_vector(x), ov = to_vector(out);
  // 0.375 is exact, so the f64 product rounds once, as the expected value does.
  for (std::size_t i = 0; i < xv.size(); ++i) EXPECT_EQ(ov[i], 0.375 * xv[i]);
}

TEST(Scale, InPlaceMatchesOutOfPlace) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    OwnedTensor x = random_tensor({1001}, dt, Device::cpu, 21);
    OwnedTensor expected({1001}, dt, Device::cpu);
    scale(x, -1.0f / 3.0f, expected);
    scale(x, -1.0f / 3.0f, x);
    EXPECT_EQ(to_vector(x), to_vector(expected));
  }
}

TEST(Scale, RejectsMismatchedOutput) {
  OwnedTensor x({4, 6}, DType::f32, Device::cpu), out({4, 5}, DType::f32, Device::cpu);
  OwnedTensor out_bf16({4, 6}, DType::bf16, Device::cpu);
  expect_error([&] { scale(x, 2.0f, out); }, "scale: out must have shape [4, 6], got f32[4, 5] cpu");
  expect_error([&] { scale(x, 2.0f, out_bf16); }, "scale: out must be f32, got bf16[4, 6] cpu");
}

}  // namespace
}  // namespace sy::test
