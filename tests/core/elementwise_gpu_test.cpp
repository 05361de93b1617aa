// add and cast on CUDA against the CPU reference on fresh random inputs, f32 and bf16.
#include <cmath>
#include <cstring>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// Raw bytes of a tensor on any device.
std::vector<unsigned char> bytes_of(const Tensor& t) {
  OwnedTensor host(t.shape(), t.dtype(), Device::cpu);
  copy(host, t);
  const auto* p = static_cast<const unsigned char*>(host.view().data());
  return std::vector<unsigned char>(p, p + host.view().bytes());
}

class ElementwiseGpu : public ::testing::TestWithParam<DType> {};

TEST_P(ElementwiseGpu, AddMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // f32: one rounding of the sum (~6e-8 relative; 1e-6). bf16: one rounding to 8 bits (1e-2).
  const double tol = dt == DType::f32 ? 1e-6 : 1e-2;
  for (const Shape& shape : {Shape{37, 768}, Shape{5, 33}, Shape{100003}}) {
    SCOPED_TRACE(shape_string(shape));
    const std::uint64_t seed = 1000 + std::uint64_t(shape[0]);
    OwnedTensor a = random_tensor(shape, dt, Device::cuda, seed), b = random_tensor(shape, dt, Device::cuda, seed + 1);
    OwnedTensor out(shape, dt, Device::cuda);
    poison(out);
    add(a, b, out);
    device_synchronize();

    OwnedTensor ac = convert(a, DType::f64, Device::cpu), bc = convert(b, DType::f64, Device::cpu);
    OwnedTensor outc(shape, DType::f64, Device::cpu);
    add(ac, bc, outc);
    EXPECT_LT(relative_error(out, outc), tol);

    // Against the CPU path in the same dtype the result is bit-identical: both round the exact
    // sum once to f32 (then, for bf16, once more to nearest even).
    OwnedTensor a_same = convert(a, dt, Device::cpu), b_same = convert(b, dt, Device::cpu);
    OwnedTensor out_same(shape, dt, Device::cpu);
    add(a_same, b_same, out_same);
    EXPECT_EQ(bytes_of(out), bytes_of(out_same));
  }
}

TEST_P(ElementwiseGpu, AddOutputMayAliasEitherInput) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor a = random_tensor({999}, dt, Device::cuda, 1100), b = random_tensor({999}, dt, Device::cuda, 1101);
  OwnedTensor expected({999}, dt, Device::cuda);
  add(a, b, expected);
  OwnedTensor into_a = convert(a, dt, Device::cuda), into_b = convert(b, dt, Device::cuda);
  add(into_a, b, into_a);
  add(a, into_b, into_b);
  device_synchronize();
  EXPECT_EQ(bytes_of(into_a), bytes_of(expected));
  EXPECT_EQ(bytes_of(into_b), bytes_of(expected));
}

TEST_P(ElementwiseGpu, CastMatchesCpuBitForBit) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const DType other = dt == DType::f32 ? DType::bf16 : DType::f32;
  // f32 sources carry the rounding ties of RoundsToNearestEvenInBf16 in front of random values.
  OwnedTensor src_host = random_tensor({4099}, dt, Device::cpu, 1200);
  if (dt == DType::f32) {
    float* p = src_host.view().ptr<float>();
    const float ties[] = {1.00390625f, 1.01171875f, -1.00390625f, std::nextafter(1.00390625f, 2.0f)};
    std::memcpy(p, ties, sizeof ties);
  }
  OwnedTensor src = convert(src_host, dt, Device::cuda);
  for (DType to : {other, dt}) {
    SCOPED_TRACE(dtype_name(to));
    OwnedTensor dst({4099}, to, Device::cuda), dst_c({4099}, to, Device::cpu);
    poison(dst);
    cast(src, dst);
    device_synchronize();
    cast(src_host, dst_c);
    EXPECT_EQ(bytes_of(dst), bytes_of(dst_c));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ElementwiseGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
