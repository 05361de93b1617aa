// sum_squares CUDA kernel against the CPU reference on fresh random inputs, f32 and bf16, and
// its bitwise determinism.
#include <cstring>
#include <functional>

#include "tests/testing.h"

namespace sy::test {
namespace {

class SumSquaresGpu : public ::testing::TestWithParam<DType> {};

TEST_P(SumSquaresGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (std::int64_t n : {std::int64_t(1), std::int64_t(1000), (std::int64_t(1) << 20) + 3}) {
    SCOPED_TRACE(::testing::Message() << "numel " << n);
    const std::uint64_t seed = 500 + std::uint64_t(n % 1000);
    OwnedTensor x = random_tensor({n}, dt, Device::cuda, seed);
    OwnedTensor out = random_tensor({1}, DType::f32, Device::cuda, seed + 1, 10.0f);  // accumulates onto this
    // The reference runs in f64 on the same (already rounded) inputs.
    OwnedTensor xc = convert(x, DType::f64, Device::cpu), outc = convert(out, DType::f32, Device::cpu);
    sum_squares(x, out);
    device_synchronize();
    sum_squares(xc, outc);
    // fp32 partial sums of inputs that are exact in fp32 (bf16 included): 1e-5.
    EXPECT_LT(relative_error(out, outc), 1e-5);
  }
}

// Slices that start off a 16-byte boundary (as a parameter's gradient inside a flat buffer can),
// so the elements before the first whole pack and after the last one are counted too, from
// inputs shorter than one pack to ones that take many grid strides.
TEST_P(SumSquaresGpu, MisalignedSlicesMatchCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor x = random_tensor({(std::int64_t(1) << 21) + 64}, dt, Device::cuda, 811);
  OwnedTensor xc = convert(x, DType::f64, Device::cpu);
  for (std::int64_t offset : {1, 3, 5}) {
    for (std::int64_t n : {std::int64_t(2), std::int64_t(7), std::int64_t(4099), (std::int64_t(1) << 21) + 13}) {
      SCOPED_TRACE(::testing::Message() << "offset " << offset << " numel " << n);
      OwnedTensor out = zeros({1}, DType::f32, Device::cuda), outc = zeros({1}, DType::f32, Device::cpu);
      sum_squares(x.view().slice_rows(offset, n), out);
      device_synchronize();
      sum_squares(xc.view().slice_rows(offset, n), outc);
      EXPECT_LT(relative_error(out, outc), 1e-5);
    }
  }
}

// A list of parts in one pass: slices of two buffers, some off a 16-byte boundary, one empty, and
// more parts (150) than one launch takes, against the CPU reference of one call per part.
TEST_P(SumSquaresGpu, PartsMatchCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor a = random_tensor({(std::int64_t(1) << 22) + 64}, dt, Device::cuda, 901);
  OwnedTensor b = random_tensor({100003}, dt, Device::cuda, 902);
  OwnedTensor ac = convert(a, DType::f64, Device::cpu), bc = convert(b, DType::f64, Device::cpu);
  for (const int count : {3, 150}) {
    SCOPED_TRACE(::testing::Message() << count << " parts");
    std::vector<Tensor> parts, parts_c;
    for (int i = 0; i < count; ++i) {
      const bool from_a = i % 3 != 1;
      const std::int64_t offset = std::int64_t(i) * 13 + (i % 5), numel = i == 2 ? 0 : (i % 4 == 0 ? 20000 + i : 37 + i);
      parts.push_back((from_a ? a : b).view().slice_rows(offset, numel));
      parts_c.push_back((from_a ? ac : bc).view().slice_rows(offset, numel));
    }
    if (count == 3) {  // one large part: the grid's share logic with parts of very different sizes
      parts[0] = a.view().slice_rows(1, std::int64_t(1) << 22);
      parts_c[0] = ac.view().slice_rows(1, std::int64_t(1) << 22);
    }
    OwnedTensor out = zeros({1}, DType::f32, Device::cuda), outc = zeros({1}, DType::f32, Device::cpu);
    sum_squares(parts, out);
    device_synchronize();
    sum_squares(parts_c, outc);
    EXPECT_LT(relative_error(out, outc), 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SumSquaresGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

float read_scalar(const Tensor& t) {
  float value = 0;
  OwnedTensor host({1}, DType::f32, Device::cpu);
  copy(host, t);
  std::memcpy(&value, host.view().data(), sizeof value);
  return value;
}

// Two sums of the same input, each onto a zeroed [1]: the same bits, and not zero.
void expect_same_bits_twice(const std::function<void(const Tensor&)>& sum) {
  OwnedTensor first = zeros({1}, DType::f32, Device::cuda), second = zeros({1}, DType::f32, Device::cuda);
  sum(first);
  sum(second);
  device_synchronize();
  const float a = read_scalar(first), b = read_scalar(second);
  std::uint32_t a_bits, b_bits;
  std::memcpy(&a_bits, &a, sizeof a);
  std::memcpy(&b_bits, &b, sizeof b);
  EXPECT_EQ(a_bits, b_bits) << a << " vs " << b;
  EXPECT_GT(a, 0.0f);
}

TEST(SumSquaresGpuDeterminism, SameInputGivesSameBits) {
  SY_REQUIRE_GPU();
  OwnedTensor x = random_tensor({(std::int64_t(1) << 22) + 5}, DType::f32, Device::cuda, 77);
  expect_same_bits_twice([&](const Tensor& out) { sum_squares(x, out); });
}

TEST(SumSquaresGpuDeterminism, SamePartsGiveSameBits) {
  SY_REQUIRE_GPU();
  OwnedTensor x = random_tensor({(std::int64_t(1) << 22) + 5}, DType::f32, Device::cuda, 78);
  const std::vector<Tensor> parts = {x.view().slice_rows(3, 1 << 21), x.view().slice_rows(5, 999),
                                     x.view().slice_rows(1 << 21, (1 << 21) + 5)};
  expect_same_bits_twice([&](const Tensor& out) { sum_squares(parts, out); });
}

TEST(SumSquaresGpuDeterminism, EmptyInputLeavesOutUnchanged) {
  SY_REQUIRE_GPU();
  OwnedTensor empty({0}, DType::f32, Device::cuda);
  OwnedTensor out({1}, DType::f32, Device::cuda);
  from_vector(out, {2.5});
  sum_squares(empty, out);
  device_synchronize();
  EXPECT_EQ(read_scalar(out), 2.5f);
}

}  // namespace
}  // namespace sy::test
