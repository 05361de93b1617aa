// RoPE CUDA kernel against the CPU reference on fresh random inputs, f32 and bf16, out of
// place and in place.
#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr float kTheta = 10000.0f;

class RopeGpu : public ::testing::TestWithParam<DType> {};

TEST_P(RopeGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // f32: the kernel computes frequencies and angles in fp32 (~t * 1e-7 rad of error at t < 67,
  // below 1e-5 relative). bf16: outputs rounded to 8 bits (1e-2).
  const double tol = dt == DType::f32 ? 1e-5 : 1e-2;
  for (const Shape& shape : {Shape{2, 4, 37, 64}, Shape{1, 3, 67, 6}, Shape{3, 2, 5, 128}}) {
    SCOPED_TRACE(shape_string(shape));
    const std::uint64_t seed = 500 + std::uint64_t(shape[2] * shape[3]);
    OwnedTensor x = random_tensor(shape, dt, Device::cuda, seed);
    OwnedTensor dy = random_tensor(shape, dt, Device::cuda, seed + 1);
    OwnedTensor y(shape, dt, Device::cuda), dx(shape, dt, Device::cuda);
    poison(y);
    poison(dx);

    OwnedTensor xc = convert(x, DType::f64, Device::cpu), dyc = convert(dy, DType::f64, Device::cpu);
    OwnedTensor yc(shape, DType::f64, Device::cpu), dxc(shape, DType::f64, Device::cpu);

    rope_forward(x, y, kTheta);
    rope_backward(dy, dx, kTheta);
    device_synchronize();
    rope_forward(xc, yc, kTheta);
    rope_backward(dyc, dxc, kTheta);

    EXPECT_LT(relative_error(y, yc), tol);
    EXPECT_LT(relative_error(dx, dxc), tol);
  }
}

TEST_P(RopeGpu, InPlaceEqualsOutOfPlace) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const Shape shape{2, 3, 45, 32};
  OwnedTensor x = random_tensor(shape, dt, Device::cuda, 600);
  OwnedTensor y(shape, dt, Device::cuda), dx(shape, dt, Device::cuda);
  rope_forward(x, y, kTheta);
  rope_backward(x, dx, kTheta);
  OwnedTensor inplace = convert(x, dt, Device::cuda), inplace_back = convert(x, dt, Device::cuda);
  rope_forward(inplace, inplace, kTheta);
  rope_backward(inplace_back, inplace_back, kTheta);
  device_synchronize();
  EXPECT_EQ(to_vector(inplace), to_vector(y));
  EXPECT_EQ(to_vector(inplace_back), to_vector(dx));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RopeGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
