// Philox and the random fills on the CPU: the published known-answer vectors, the moments of
// the uniform and normal draws, and the sharding property of index_offset.
#include <cmath>
#include <string>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// Builds a key and index from Philox4x32's counter words (c0..c3) and key words (k0, k1) as
// core/rng.h maps them: counter = (index lo, index hi, layer, purpose), key = (seed lo, seed hi).
Philox4 philox_words(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3, std::uint32_t k0,
                     std::uint32_t k1) {
  const RngKey key{(std::uint64_t(k1) << 32) | k0, c3, c2};
  return philox4x32(key, (std::uint64_t(c1) << 32) | c0);
}

std::vector<std::uint32_t> words(const Philox4& r) { return {r.v[0], r.v[1], r.v[2], r.v[3]}; }

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

double variance(const std::vector<double>& v) {
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return s / double(v.size());
}

// The known-answer tests of Random123 (kat_vectors, philox4x32_10).
TEST(Philox, MatchesPublishedKnownAnswers) {
  EXPECT_EQ(words(philox_words(0, 0, 0, 0, 0, 0)),
            (std::vector<std::uint32_t>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(words(philox_words(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff)),
            (std::vector<std::uint32_t>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(words(philox_words(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0)),
            (std::vector<std::uint32_t>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Rng, UniformLiesInUnitIntervalWithMeanOneHalf) {
  OwnedTensor t({100000}, DType::f32, Device::cpu);
  fill_uniform(t, RngKey{7, std::uint32_t(RngPurpose::test), 0}, 0.0f, 1.0f);
  const std::vector<double> v = to_vector(t);
  for (double x : v) ASSERT_TRUE(x >= 0.0 && x < 1.0) << x;
  // Standard error of the mean: sqrt(1/12 / 1e5) = 9e-4; allow ~5 of them.
  EXPECT_NEAR(mean(v), 0.5, 5e-3);
  EXPECT_NEAR(variance(v), 1.0 / 12.0, 2e-3);
}

TEST(Rng, UniformHonoursItsBounds) {
  OwnedTensor t({10000}, DType::f64, Device::cpu);
  fill_uniform(t, RngKey{8, std::uint32_t(RngPurpose::test), 0}, -3.0f, 5.0f);
  const std::vector<double> v = to_vector(t);
  for (double x : v) ASSERT_TRUE(x >= -3.0 && x < 5.0) << x;
  EXPECT_NEAR(mean(v), 1.0, 0.2);  // standard error 8 / sqrt(12e4) = 0.023
}

TEST(Rng, NormalHasMeanZeroAndUnitVariance) {
  OwnedTensor t({100000}, DType::f32, Device::cpu);
  fill_normal(t, RngKey{9, std::uint32_t(RngPurpose::test), 0}, 0.0f, 1.0f);
  const std::vector<double> v = to_vector(t);
  // Standard errors over 1e5 draws: mean 3.2e-3, variance 4.5e-3; allow ~5 of them.
  EXPECT_NEAR(mean(v), 0.0, 0.016);
  EXPECT_NEAR(variance(v), 1.0, 0.022);

  OwnedTensor shifted({100000}, DType::f32, Device::cpu);
  fill_normal(shifted, RngKey{9, std::uint32_t(RngPurpose::test), 0}, 3.0f, 2.0f);
  const std::vector<double> s = to_vector(shifted);
  EXPECT_NEAR(mean(s), 3.0, 0.032);
  EXPECT_NEAR(variance(s), 4.0, 0.09);
}

TEST(Rng, FillWithIndexOffsetEqualsTailOfFullFill) {
  const RngKey key{11, std::uint32_t(RngPurpose::init), 3};
  constexpr std::int64_t kTotal = 100, kOffset = 37;
  for (bool normal : {false, true}) {
    SCOPED_TRACE(normal ? "normal" : "uniform");
    OwnedTensor full({kTotal}, DType::f32, Device::cpu), shard({kTotal - kOffset}, DType::f32, Device::cpu);
    if (normal) {
      fill_normal(full, key, 0.5f, 0.02f);
      fill_normal(shard, key, 0.5f, 0.02f, kOffset);
    } else {
      fill_uniform(full, key, -0.1f, 0.1f);
      fill_uniform(shard, key, -0.1f, 0.1f, kOffset);
    }
    const std::vector<double> fv = to_vector(full);
    EXPECT_EQ(to_vector(shard), std::vector<double>(fv.begin() + kOffset, fv.end()));
  }
}

TEST(Rng, DifferentLayersAndPurposesGiveDifferentStreams) {
  const std::uint32_t init = std::uint32_t(RngPurpose::init), dropout = std::uint32_t(RngPurpose::dropout);
  std::vector<std::vector<double>> streams;
  for (RngKey key : {RngKey{1, init, 0}, RngKey{1, init, 1}, RngKey{1, dropout, 0}, RngKey{2, init, 0}}) {
    OwnedTensor t({64}, DType::f64, Device::cpu);
    fill_uniform(t, key, 0.0f, 1.0f);
    streams.push_back(to_vector(t));
  }
  for (std::size_t i = 0; i < streams.size(); ++i) {
    for (std::size_t j = i + 1; j < streams.size(); ++j) EXPECT_NE(streams[i], streams[j]) << i << " vs " << j;
  }
}

TEST(Rng, FillRejectsIntegerTensor) {
  OwnedTensor t({4}, DType::i32, Device::cpu);
  try {
    fill_uniform(t, RngKey{}, 0.0f, 1.0f);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fill_uniform: t must be f32, f64 or bf16, got i32[4] cpu"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::test
