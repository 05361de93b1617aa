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
  // f32: cos and sin come from a table computed in double and stored in f32 (~1e-7 relative).
  // bf16: outputs rounded to 8 bits (1e-2).
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

// In place on the q and k heads inside token-major qkv rows (the model's layout), with 16-byte
// accesses (D = 64) and without (D = 6, and a row stride that is not a multiple of 8).
TEST_P(RopeGpu, InPlaceOnTokenMajorHeadsMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const double tol = dt == DType::f32 ? 1e-5 : 1e-2;
  struct Layout {
    std::int64_t batch, heads, kv_heads, seq, dim;
  };
  for (const Layout l : {Layout{2, 12, 4, 130, 64}, Layout{3, 3, 1, 17, 6}}) {
    SCOPED_TRACE(::testing::Message() << "D " << l.dim);
    const std::int64_t cols = (l.heads + 2 * l.kv_heads) * l.dim;
    auto qk_of = [&](const Tensor& qkv) {
      return qkv.as_strided({l.batch, l.heads + l.kv_heads, l.seq, l.dim}, {l.seq * cols, l.dim, cols, 1});
    };
    OwnedTensor qkv = random_tensor({l.batch * l.seq, cols}, dt, Device::cuda, 610 + std::uint64_t(l.dim));
    OwnedTensor qkvc = convert(qkv, DType::f64, Device::cpu);
    const Tensor qk = qk_of(qkv), qkc = qk_of(qkvc);
    rope_forward(qk, qk, kTheta);
    device_synchronize();
    rope_forward(qkc, qkc, kTheta);
    EXPECT_LT(relative_error(qkv, qkvc), tol);
    rope_backward(qk, qk, kTheta);
    device_synchronize();
    rope_backward(qkc, qkc, kTheta);
    EXPECT_LT(relative_error(qkv, qkvc), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RopeGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
