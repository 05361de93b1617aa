// add and cast on the CPU: sums, aliasing, bf16 round-to-nearest-even on exact bit patterns,
// the f32 -> bf16 -> f32 error bound, and the argument checks.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

float float_of_bits(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// bf16 bit patterns of cast(f32 values -> bf16).
std::vector<std::uint16_t> bf16_bits_of(const std::vector<float>& values) {
  OwnedTensor src({std::int64_t(values.size())}, DType::f32, Device::cpu);
  OwnedTensor dst({std::int64_t(values.size())}, DType::bf16, Device::cpu);
  std::memcpy(src.view().data(), values.data(), values.size() * sizeof(float));
  cast(src, dst);
  std::vector<std::uint16_t> bits(values.size());
  for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = dst.view().ptr<bfloat16>()[i].bits;
  return bits;
}

TEST(Add, SumsElementwise) {
  OwnedTensor a = random_tensor({7, 13}, DType::f32, Device::cpu, 30);
  OwnedTensor b = random_tensor({7, 13}, DType::f32, Device::cpu, 31);
  OwnedTensor out({7, 13}, DType::f32, Device::cpu);
  poison(out);
  add(a, b, out);
  const std::vector<double> av = to_vector(a), bv = to_vector(b), ov = to_vector(out);
  // f32 + f32 is exact in double, so rounding once to f32 is the correctly rounded sum.
  for (std::size_t i = 0; i < av.size(); ++i) EXPECT_EQ(ov[i], double(float(av[i]) + float(bv[i]))) << "i=" << i;
}

TEST(Add, OutputMayAliasEitherInput) {
  OwnedTensor a = random_tensor({5, 9}, DType::bf16, Device::cpu, 32);
  OwnedTensor b = random_tensor({5, 9}, DType::bf16, Device::cpu, 33);
  OwnedTensor expected({5, 9}, DType::bf16, Device::cpu);
  add(a, b, expected);
  OwnedTensor into_a = convert(a, DType::bf16, Device::cpu), into_b = convert(b, DType::bf16, Device::cpu);
  add(into_a, b, into_a);
  add(a, into_b, into_b);
  EXPECT_EQ(to_vector(into_a), to_vector(expected));
  EXPECT_EQ(to_vector(into_b), to_vector(expected));
}

TEST(Cast, RoundsToNearestEvenInBf16) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::uint16_t> bits = bf16_bits_of({
      1.0f,
      1.00390625f,                        // 1 + 2^-8: halfway between 1.0 and 1.0078125, ties to the even 1.0
      1.01171875f,                        // 1 + 3 * 2^-8: halfway, ties to the even 1.015625
      -1.00390625f,                       // the same tie with the sign set
      std::nextafter(1.00390625f, 2.0f),  // just above the first tie: rounds up to 1.0078125
      1.0078125f,                         // exactly representable
      float_of_bits(0x7f7f0000u),         // the largest finite bf16
      std::numeric_limits<float>::max(),  // rounds up past the largest bf16: infinity
      -inf,
  });
  const std::vector<std::uint16_t> expected{0x3f80, 0x3f80, 0x3f82, 0xbf80, 0x3f81, 0x3f81, 0x7f7f, 0x7f80, 0xff80};
  EXPECT_EQ(bits, expected);
  const std::uint16_t nan_bits = bf16_bits_of({std::numeric_limits<float>::quiet_NaN()})[0];
  EXPECT_EQ(nan_bits & 0x7f80, 0x7f80);
  EXPECT_NE(nan_bits & 0x007f, 0) << "NaN must stay NaN, got " << nan_bits;
}

TEST(Cast, F32ToBf16RoundTripErrorIsAtMostTwoToTheMinus8Relative) {
  for (float scale : {1e-30f, 1e-3f, 1.0f, 1e3f, 1e30f}) {
    SCOPED_TRACE(scale);
    OwnedTensor x = random_tensor({4097}, DType::f32, Device::cpu, 34, scale);
    OwnedTensor narrow({4097}, DType::bf16, Device::cpu), back({4097}, DType::f32, Device::cpu);
    cast(x, narrow);
    cast(narrow, back);
    const std::vector<double> xv = to_vector(x), bv = to_vector(back);
    for (std::size_t i = 0; i < xv.size(); ++i)
      ASSERT_LE(std::abs(bv[i] - xv[i]), std::ldexp(std::abs(xv[i]), -8)) << "x=" << xv[i] << " back=" << bv[i];
  }
}

TEST(Cast, Bf16ToF32AndBackIsExact) {
  OwnedTensor x = random_tensor({1000}, DType::bf16, Device::cpu, 35);
  OwnedTensor wide({1000}, DType::f32, Device::cpu), back({1000}, DType::bf16, Device::cpu);
  cast(x, wide);
  cast(wide, back);
  EXPECT_EQ(to_vector(wide), to_vector(x));
  EXPECT_EQ(std::memcmp(back.view().data(), x.view().data(), x.view().bytes()), 0);
}

TEST(Cast, RejectsDifferentElementCounts) {
  OwnedTensor src({4}, DType::f32, Device::cpu), dst({5}, DType::bf16, Device::cpu);
  expect_error([&] { cast(src, dst); }, "cast: f32[4] cpu into bf16[5] cpu (element counts differ)");
}

TEST(Add, RejectsMismatchedShapes) {
  OwnedTensor a({3, 4}, DType::f32, Device::cpu), b({4, 3}, DType::f32, Device::cpu), out({3, 4}, DType::f32, Device::cpu);
  expect_error([&] { add(a, b, out); }, "add: b must have shape [3, 4], got f32[4, 3] cpu");
}

}  // namespace
}  // namespace sy::test
