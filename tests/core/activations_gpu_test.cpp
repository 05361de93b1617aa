// Activation CUDA kernels against the CPU reference on fresh random inputs, f32 and bf16.
#include <functional>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

class ActivationsGpu : public ::testing::TestWithParam<DType> {
 protected:
  // f32: tanhf/expf are within a few ulp of the fp64 reference (1e-5). bf16: inputs and
  // outputs rounded to 8 bits (1e-2).
  double tolerance() const { return GetParam() == DType::f32 ? 1e-5 : 1e-2; }

  // Runs forward and backward of one op on CUDA and on the CPU (f64, same rounded inputs) and
  // compares y and dx. x has x_shape, y and dy have y_shape.
  void expect_matches_cpu(const Shape& x_shape, const Shape& y_shape,
                          const std::function<void(const Tensor&, const Tensor&)>& forward,
                          const std::function<void(const Tensor&, const Tensor&, const Tensor&)>& backward,
                          std::uint64_t seed) const {
    const DType dt = GetParam();
    OwnedTensor x = random_tensor(x_shape, dt, Device::cuda, seed, 2.0f);  // std 2 reaches the tails
    OwnedTensor dy = random_tensor(y_shape, dt, Device::cuda, seed + 1);
    OwnedTensor y(y_shape, dt, Device::cuda), dx(x_shape, dt, Device::cuda);
    poison(y);
    poison(dx);
    OwnedTensor xc = convert(x, DType::f64, Device::cpu), dyc = convert(dy, DType::f64, Device::cpu);
    OwnedTensor yc(y_shape, DType::f64, Device::cpu), dxc(x_shape, DType::f64, Device::cpu);
    forward(x, y);
    backward(x, dy, dx);
    device_synchronize();
    forward(xc, yc);
    backward(xc, dyc, dxc);
    EXPECT_LT(relative_error(y, yc), tolerance());
    EXPECT_LT(relative_error(dx, dxc), tolerance());
  }
};

TEST_P(ActivationsGpu, GeluMatchesCpuReference) {
  SY_REQUIRE_GPU();
  for (const Shape& shape : {Shape{37, 768}, Shape{5, 33}, Shape{1000, 129}}) {
    SCOPED_TRACE(shape_string(shape));
    expect_matches_cpu(
        shape, shape, [](const Tensor& x, const Tensor& y) { gelu_forward(x, y); },
        [](const Tensor& x, const Tensor& dy, const Tensor& dx) { gelu_backward(x, dy, dx); },
        700 + std::uint64_t(shape[0]));
  }
}

// The recomputing backward: dx (in place over dy) and y from one pass, 16-byte (37 x 768) and
// element-wise (5 x 33, 1000 x 129) paths.
TEST_P(ActivationsGpu, GeluBackwardRecomputeMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (const Shape& shape : {Shape{37, 768}, Shape{5, 33}, Shape{1000, 129}}) {
    SCOPED_TRACE(shape_string(shape));
    const std::uint64_t seed = 750 + std::uint64_t(shape[0]);
    OwnedTensor x = random_tensor(shape, dt, Device::cuda, seed, 2.0f);
    OwnedTensor dy = random_tensor(shape, dt, Device::cuda, seed + 1);
    OwnedTensor y(shape, dt, Device::cuda);
    poison(y);
    OwnedTensor xc = convert(x, DType::f64, Device::cpu), dyc = convert(dy, DType::f64, Device::cpu);
    OwnedTensor yc(shape, DType::f64, Device::cpu), dxc(shape, DType::f64, Device::cpu);
    gelu_backward_recompute(x, dy, dy, y);  // dx over dy
    device_synchronize();
    gelu_forward(xc, yc);
    gelu_backward(xc, dyc, dxc);
    EXPECT_LT(relative_error(y, yc), tolerance());
    EXPECT_LT(relative_error(dy, dxc), tolerance());
  }
}

TEST_P(ActivationsGpu, ReluMatchesCpuReference) {
  SY_REQUIRE_GPU();
  for (const Shape& shape : {Shape{37, 768}, Shape{5, 33}, Shape{1000, 129}}) {
    SCOPED_TRACE(shape_string(shape));
    expect_matches_cpu(
        shape, shape, [](const Tensor& x, const Tensor& y) { relu_forward(x, y); },
        [](const Tensor& x, const Tensor& dy, const Tensor& dx) { relu_backward(x, dy, dx); },
        800 + std::uint64_t(shape[0]));
  }
}

TEST_P(ActivationsGpu, SwiGluMatchesCpuReference) {
  SY_REQUIRE_GPU();
  for (auto [rows, hidden] : {std::pair<std::int64_t, std::int64_t>{37, 768}, {5, 33}, {1000, 129}, {3, 1}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << hidden);
    expect_matches_cpu(
        {rows, 2 * hidden}, {rows, hidden}, [](const Tensor& x, const Tensor& y) { swiglu_forward(x, y); },
        [](const Tensor& x, const Tensor& dy, const Tensor& dx) { swiglu_backward(x, dy, dx); },
        900 + std::uint64_t(rows + hidden));
  }
}

TEST_P(ActivationsGpu, ReluDerivativeAtZeroIsZero) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor x({4}, dt, Device::cuda), dy({4}, dt, Device::cuda), dx({4}, dt, Device::cuda);
  from_vector(x, {0.0, -0.0, 1.5, -1.5});
  from_vector(dy, {3, 3, 3, 3});
  poison(dx);
  relu_backward(x, dy, dx);
  EXPECT_EQ(to_vector(dx), (std::vector<double>{0, 0, 3, 0}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ActivationsGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
