// RMSNorm CUDA kernels against the CPU reference on fresh random inputs, f32 and bf16.
#include "tests/testing.h"

namespace sy::test {
namespace {

class RmsNormGpu : public ::testing::TestWithParam<DType> {};

TEST_P(RmsNormGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // f32: only summation order differs (1e-5). bf16: inputs and outputs rounded to 8 bits (1e-2).
  const double tol = dt == DType::f32 ? 1e-5 : 1e-2;
  // 768, 256, 1536, 1544 and 776 take the 16-byte kernels (dweight in 1, 8, 3, 1 and 40 row
  // chunks; 1544 and 776 end in a partial 256-channel tile); 33 and 129 the scalar path.
  for (auto [rows, channels] : {std::pair{37, 768}, std::pair{1000, 256}, std::pair{300, 1536}, std::pair{50, 1544},
                                std::pair{5000, 776}, std::pair{5, 33}, std::pair{1000, 129}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << channels);
    const std::uint64_t seed = 100 + rows;
    OwnedTensor x = random_tensor({rows, channels}, dt, Device::cuda, seed);
    OwnedTensor w = random_tensor({channels}, dt, Device::cuda, seed + 1);
    OwnedTensor dy = random_tensor({rows, channels}, dt, Device::cuda, seed + 2);
    OwnedTensor y({rows, channels}, dt, Device::cuda), rstd({rows}, DType::f32, Device::cuda);
    OwnedTensor dx({rows, channels}, dt, Device::cuda);
    OwnedTensor dw = random_tensor({channels}, DType::f32, Device::cuda, seed + 3);  // accumulates onto this
    OwnedTensor dw_new({channels}, DType::f32, Device::cuda);                        // overwritten
    poison(y); poison(rstd); poison(dx); poison(dw_new);

    // The reference runs in f64 on the same (already rounded) inputs.
    OwnedTensor xc = convert(x, DType::f64, Device::cpu), wc = convert(w, DType::f64, Device::cpu);
    OwnedTensor dyc = convert(dy, DType::f64, Device::cpu), dwc = convert(dw, DType::f32, Device::cpu);
    OwnedTensor yc({rows, channels}, DType::f64, Device::cpu), rc({rows}, DType::f32, Device::cpu);
    OwnedTensor dxc({rows, channels}, DType::f64, Device::cpu), dw_newc({channels}, DType::f32, Device::cpu);
    poison(dw_newc);

    rmsnorm_forward(x, w, y, rstd, 1e-5f);
    rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::accumulate);
    rmsnorm_backward(x, w, rstd, dy, dx, dw_new, GradMode::overwrite);
    device_synchronize();
    rmsnorm_forward(xc, wc, yc, rc, 1e-5f);
    rmsnorm_backward(xc, wc, rc, dyc, dxc, dwc, GradMode::accumulate);
    rmsnorm_backward(xc, wc, rc, dyc, dxc, dw_newc, GradMode::overwrite);

    EXPECT_LT(relative_error(y, yc), tol);
    EXPECT_LT(relative_error(rstd, rc), 1e-5);
    EXPECT_LT(relative_error(dx, dxc), tol);
    EXPECT_LT(relative_error(dw, dwc), tol);
    EXPECT_LT(relative_error(dw_new, dw_newc), tol);  // NaN left anywhere fails
  }
}

// No rows: overwrite writes a zero weight gradient (over NaN), accumulate leaves it.
TEST_P(RmsNormGpu, WithoutRowsOverwriteWritesZeros) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor x({0, 40}, dt, Device::cuda), dy({0, 40}, dt, Device::cuda), dx({0, 40}, dt, Device::cuda);
  OwnedTensor w = random_tensor({40}, dt, Device::cuda, 7), rstd({0}, DType::f32, Device::cuda);
  OwnedTensor dw({40}, DType::f32, Device::cuda), kept = random_tensor({40}, DType::f32, Device::cuda, 8);
  poison(dw);
  const std::vector<double> before = to_vector(kept);
  rmsnorm_backward_residual(x, w, rstd, dy, dx, dw, GradMode::overwrite);
  rmsnorm_backward(x, w, rstd, dy, dx, kept, GradMode::accumulate);
  device_synchronize();
  EXPECT_EQ(to_vector(dw), std::vector<double>(40, 0.0));
  EXPECT_EQ(to_vector(kept), before);
}

// The fused residual forms (add + norm forward, backward adding into the residual gradient)
// against the CPU reference, with 16-byte accesses (768) and without (33, 129).
TEST_P(RmsNormGpu, ResidualFormsMatchCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const double tol = dt == DType::f32 ? 1e-5 : 1e-2;  // as above
  for (auto [rows, channels] : {std::pair{37, 768}, std::pair{1000, 256}, std::pair{50, 1544}, std::pair{5, 33},
                                std::pair{1000, 129}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << channels);
    const std::uint64_t seed = 300 + rows;
    OwnedTensor a = random_tensor({rows, channels}, dt, Device::cuda, seed);
    OwnedTensor b = random_tensor({rows, channels}, dt, Device::cuda, seed + 1);
    OwnedTensor w = random_tensor({channels}, dt, Device::cuda, seed + 2);
    OwnedTensor dy = random_tensor({rows, channels}, dt, Device::cuda, seed + 3);
    OwnedTensor dres = random_tensor({rows, channels}, dt, Device::cuda, seed + 4);  // accumulates onto this
    OwnedTensor sum({rows, channels}, dt, Device::cuda), y({rows, channels}, dt, Device::cuda);
    OwnedTensor rstd({rows}, DType::f32, Device::cuda);
    OwnedTensor dw = random_tensor({channels}, DType::f32, Device::cuda, seed + 5);  // accumulates onto this
    OwnedTensor dw_new({channels}, DType::f32, Device::cuda), dres_new = convert(dres, dt, Device::cuda);
    poison(sum); poison(y); poison(rstd); poison(dw_new);

    // The reference adds in T (as the kernel rounds the sum to T), then runs in f64.
    OwnedTensor sum_t({rows, channels}, dt, Device::cpu);
    add(convert(a, dt, Device::cpu), convert(b, dt, Device::cpu), sum_t);
    OwnedTensor sumc = convert(sum_t, DType::f64, Device::cpu), wc = convert(w, DType::f64, Device::cpu);
    OwnedTensor dyc = convert(dy, DType::f64, Device::cpu), dresc = convert(dres, DType::f64, Device::cpu);
    OwnedTensor dwc = convert(dw, DType::f32, Device::cpu);
    OwnedTensor yc({rows, channels}, DType::f64, Device::cpu), rc({rows}, DType::f32, Device::cpu);

    OwnedTensor dw_newc({channels}, DType::f32, Device::cpu), dres_newc = convert(dres, DType::f64, Device::cpu);
    poison(dw_newc);

    add_rmsnorm_forward(a, b, sum, w, y, rstd, 1e-5f);
    rmsnorm_backward_residual(sum, w, rstd, dy, dres, dw, GradMode::accumulate);
    rmsnorm_backward_residual(sum, w, rstd, dy, dres_new, dw_new, GradMode::overwrite);
    device_synchronize();
    rmsnorm_forward(sumc, wc, yc, rc, 1e-5f);
    rmsnorm_backward_residual(sumc, wc, rc, dyc, dresc, dwc, GradMode::accumulate);
    rmsnorm_backward_residual(sumc, wc, rc, dyc, dres_newc, dw_newc, GradMode::overwrite);

    EXPECT_EQ(to_vector(sum), to_vector(sum_t));
    EXPECT_LT(relative_error(y, yc), tol);
    EXPECT_LT(relative_error(rstd, rc), 1e-5);
    EXPECT_LT(relative_error(dres, dresc), tol);
    EXPECT_LT(relative_error(dw, dwc), tol);
    // Overwriting dweight still adds the input gradient into the residual stream's.
    EXPECT_LT(relative_error(dres_new, dres_newc), tol);
    EXPECT_LT(relative_error(dw_new, dw_newc), tol);
  }
}

// The residual stream may take the buffer of the branch output it absorbs: sum aliasing b.
TEST_P(RmsNormGpu, AddRmsNormInPlaceEqualsOutOfPlace) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [rows, channels] : {std::pair{37, 768}, std::pair{5, 33}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << channels);
    OwnedTensor a = random_tensor({rows, channels}, dt, Device::cuda, 400 + rows);
    OwnedTensor b = random_tensor({rows, channels}, dt, Device::cuda, 401 + rows);
    OwnedTensor w = random_tensor({channels}, dt, Device::cuda, 402 + rows);
    OwnedTensor sum({rows, channels}, dt, Device::cuda), y({rows, channels}, dt, Device::cuda);
    OwnedTensor y2({rows, channels}, dt, Device::cuda), rstd({rows}, DType::f32, Device::cuda);
    add_rmsnorm_forward(a, b, sum, w, y, rstd, 1e-5f);
    add_rmsnorm_forward(a, b, b, w, y2, rstd, 1e-5f);
    device_synchronize();
    EXPECT_EQ(to_vector(b), to_vector(sum));
    EXPECT_EQ(to_vector(y2), to_vector(y));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RmsNormGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
