// Random fills on CUDA against the CPU fills, f32 and bf16: uniform bit for bit, normal within
// one ulp (the device and host libm may differ in the last bit of a double), and sharding.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// Bit patterns mapped to integers in the order of the values they encode, so that the
// difference of two is their distance in ulps (f32 or bf16).
std::vector<std::int64_t> ordered_bits(const Tensor& t) {
  OwnedTensor host(t.shape(), t.dtype(), Device::cpu);
  copy(host, t);
  std::vector<std::int64_t> out(std::size_t(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::int64_t bits = 0, sign_bit = 0;
    if (t.dtype() == DType::f32) {
      std::uint32_t u;
      std::memcpy(&u, host.view().ptr<float>() + i, sizeof u);
      bits = u;
      sign_bit = std::int64_t(1) << 31;
    } else {
      bits = host.view().ptr<bfloat16>()[i].bits;
      sign_bit = std::int64_t(1) << 15;
    }
    out[i] = bits & sign_bit ? -(bits & (sign_bit - 1)) : bits;
  }
  return out;
}

std::int64_t max_ulp_distance(const Tensor& a, const Tensor& b) {
  const std::vector<std::int64_t> av = ordered_bits(a), bv = ordered_bits(b);
  std::int64_t worst = 0;
  for (std::size_t i = 0; i < av.size(); ++i) worst = std::max(worst, std::abs(av[i] - bv[i]));
  return worst;
}

class RngGpu : public ::testing::TestWithParam<DType> {};

TEST_P(RngGpu, FillsMatchCpu) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const RngKey key{0x123456789abcdefull, std::uint32_t(RngPurpose::init), 17};
  // The second offset makes the counter cross from the low into the high index word.
  for (std::uint64_t offset : {std::uint64_t{0}, (std::uint64_t{1} << 32) - 1000}) {
    SCOPED_TRACE(::testing::Message() << "index_offset " << offset);
    OwnedTensor gpu({100003}, dt, Device::cuda), cpu({100003}, dt, Device::cpu);
    poison(gpu);
    fill_uniform(gpu, key, -0.5f, 1.5f, offset);
    device_synchronize();
    fill_uniform(cpu, key, -0.5f, 1.5f, offset);
    EXPECT_EQ(max_ulp_distance(gpu, cpu), 0) << "uniform: 24-bit draws and explicit fp32 rounding, bit for bit";

    poison(gpu);
    fill_normal(gpu, key, 0.25f, 0.02f, offset);
    device_synchronize();
    fill_normal(cpu, key, 0.25f, 0.02f, offset);
    EXPECT_LE(max_ulp_distance(gpu, cpu), 1) << "normal: at most one ulp";
  }
}

TEST_P(RngGpu, FillWithIndexOffsetEqualsTailOfFullFill) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const RngKey key{21, std::uint32_t(RngPurpose::init), 5};
  constexpr std::int64_t kTotal = 5000, kOffset = 1234;
  OwnedTensor full({kTotal}, dt, Device::cuda), shard({kTotal - kOffset}, dt, Device::cuda);
  fill_normal(full, key, 0.0f, 1.0f);
  fill_normal(shard, key, 0.0f, 1.0f, kOffset);
  device_synchronize();
  const std::vector<double> fv = to_vector(full);
  EXPECT_EQ(to_vector(shard), std::vector<double>(fv.begin() + kOffset, fv.end()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RngGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
