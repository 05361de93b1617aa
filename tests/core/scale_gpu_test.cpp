// scale on CUDA against the CPU reference in the same dtype, out of place and in place.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

class ScaleGpu : public ::testing::TestWithParam<DType> {};

TEST_P(ScaleGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // f32: bit-identical, both round the exact product of two floats once. bf16: the kernel rounds
  // to f32 and then to bf16, so a rare element may land one bf16 ulp (2^-8) away: 1e-3 in norm.
  const double tol = dt == DType::f32 ? 0.0 : 1e-3;
  const float factor = -0.3f;
  for (const Shape& shape : {Shape{37, 768}, Shape{5, 33}, Shape{100003}}) {
    SCOPED_TRACE(shape_string(shape));
    OwnedTensor x = random_tensor(shape, dt, Device::cuda, 300 + std::uint64_t(shape[0]));
    OwnedTensor out(shape, dt, Device::cuda), in_place = convert(x, dt, Device::cuda);
    poison(out);
    scale(x, factor, out);
    scale(in_place, factor, in_place);
    device_synchronize();

    OwnedTensor xc = convert(x, dt, Device::cpu), outc(shape, dt, Device::cpu);
    scale(xc, factor, outc);
    EXPECT_LE(relative_error(out, outc), tol);
    EXPECT_EQ(to_vector(in_place), to_vector(out));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ScaleGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
