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
  // 768, 256 and 776 take the one-pass backward (776 ends in a partial 256-channel group); 1536
  // and 1544 the 16-byte dx and column kernels (dweight in 3 and 1 row chunks; 1544 ends in a
  // partial 256-channel tile); 33 and 129 the scalar path.
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

// The one-pass backward (16-byte rows of at most 1024 channels, 8 rows a warp and 8 warps a block)
// against the CPU reference, both forms and both gradient modes, on the same saved rstd: rows
// that end in a partly filled warp (33, 1001, 16386), fewer rows than a warp takes (5), 1 to 4
// channel groups, and 33000 x 1024, where the partial rows of 8-row warps would overflow the
// partials array and each warp takes 9 rows.
TEST_P(RmsNormGpu, OnePassBackwardMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const double tol = dt == DType::f32 ? 1e-5 : 1e-2;  // as above
  for (auto [rows, channels] : {std::pair{1001, 768}, std::pair{33, 768}, std::pair{16386, 768}, std::pair{1001, 512},
                                std::pair{33, 256}, std::pair{5, 1024}, std::pair{33000, 1024}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << channels);
    const std::uint64_t seed = 500 + rows + channels;
    OwnedTensor x = random_tensor({rows, channels}, dt, Device::cuda, seed);
    OwnedTensor w = random_tensor({channels}, dt, Device::cuda, seed + 1);
    OwnedTensor dy = random_tensor({rows, channels}, dt, Device::cuda, seed + 2);
    OwnedTensor dres = random_tensor({rows, channels}, dt, Device::cuda, seed + 3);  // accumulates onto this
    OwnedTensor dw = random_tensor({channels}, DType::f32, Device::cuda, seed + 4);  // and these
    OwnedTensor dw_res = random_tensor({channels}, DType::f32, Device::cuda, seed + 5);
    OwnedTensor y({rows, channels}, dt, Device::cuda), rstd({rows}, DType::f32, Device::cuda);
    OwnedTensor dx({rows, channels}, dt, Device::cuda);
    OwnedTensor dw_new({channels}, DType::f32, Device::cuda), dw_res_new({channels}, DType::f32, Device::cuda);
    for (const OwnedTensor* t : {&dx, &dw_new, &dw_res_new}) poison(*t);
    rmsnorm_forward(x, w, y, rstd, 1e-5f);

    // The reference runs in f64 on the same inputs and the same f32 rstd.
    OwnedTensor xc = convert(x, DType::f64, Device::cpu), wc = convert(w, DType::f64, Device::cpu);
    OwnedTensor dyc = convert(dy, DType::f64, Device::cpu), rc = convert(rstd, DType::f32, Device::cpu);
    OwnedTensor dresc = convert(dres, DType::f64, Device::cpu), dxc({rows, channels}, DType::f64, Device::cpu);
    OwnedTensor dwc = convert(dw, DType::f32, Device::cpu), dw_resc = convert(dw_res, DType::f32, Device::cpu);
    OwnedTensor dw_newc({channels}, DType::f32, Device::cpu), dw_res_newc({channels}, DType::f32, Device::cpu);

    rmsnorm_backward(x, w, rstd, dy, dx, dw_new, GradMode::overwrite);
    rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::accumulate);
    rmsnorm_backward_residual(x, w, rstd, dy, dres, dw_res_new, GradMode::overwrite);
    rmsnorm_backward_residual(x, w, rstd, dy, dres, dw_res, GradMode::accumulate);  // dres gets dx twice
    device_synchronize();
    rmsnorm_backward(xc, wc, rc, dyc, dxc, dw_newc, GradMode::overwrite);
    rmsnorm_backward(xc, wc, rc, dyc, dxc, dwc, GradMode::accumulate);
    rmsnorm_backward_residual(xc, wc, rc, dyc, dresc, dw_res_newc, GradMode::overwrite);
    rmsnorm_backward_residual(xc, wc, rc, dyc, dresc, dw_resc, GradMode::accumulate);

    EXPECT_LT(relative_error(dx, dxc), tol);
    EXPECT_LT(relative_error(dres, dresc), tol);
    EXPECT_LT(relative_error(dw_new, dw_newc), tol);  // NaN left anywhere fails
    EXPECT_LT(relative_error(dw, dwc), tol);
    EXPECT_LT(relative_error(dw_res_new, dw_res_newc), tol);
    EXPECT_LT(relative_error(dw_res, dw_resc), tol);
  }
}

// dweight from the one-pass backward: the same bits on every call (partial rows added in a fixed
// order, no atomics), written or accumulated, at the benchmark shape and with 9 rows a warp.
TEST_P(RmsNormGpu, OnePassWeightGradientIsBitReproducible) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [rows, channels] : {std::pair{16384, 768}, std::pair{33000, 1024}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << channels);
    const std::uint64_t seed = 600 + rows;
    OwnedTensor x = random_tensor({rows, channels}, dt, Device::cuda, seed);
    OwnedTensor w = random_tensor({channels}, dt, Device::cuda, seed + 1);
    OwnedTensor dy = random_tensor({rows, channels}, dt, Device::cuda, seed + 2);
    OwnedTensor y({rows, channels}, dt, Device::cuda), rstd({rows}, DType::f32, Device::cuda);
    OwnedTensor dx({rows, channels}, dt, Device::cuda), dx2({rows, channels}, dt, Device::cuda);
    OwnedTensor dw({channels}, DType::f32, Device::cuda), dw2({channels}, DType::f32, Device::cuda);
    OwnedTensor dw_acc = random_tensor({channels}, DType::f32, Device::cuda, seed + 3);
    OwnedTensor dw_acc2 = convert(dw_acc, DType::f32, Device::cuda);
    rmsnorm_forward(x, w, y, rstd, 1e-5f);
    rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::overwrite);
    rmsnorm_backward(x, w, rstd, dy, dx2, dw2, GradMode::overwrite);
    rmsnorm_backward(x, w, rstd, dy, dx, dw_acc, GradMode::accumulate);
    rmsnorm_backward(x, w, rstd, dy, dx2, dw_acc2, GradMode::accumulate);
    device_synchronize();
    EXPECT_EQ(to_vector(dw2), to_vector(dw));
    EXPECT_EQ(to_vector(dw_acc2), to_vector(dw_acc));
    EXPECT_EQ(to_vector(dx2), to_vector(dx));
  }
}

// A row's dx is the same bits whichever warp and block the one-pass backward gives it: rows
// [8, 1009) of 33000 x 1024 (9 rows a warp) against the same rows on their own (8 rows a warp,
// so the rows fall in other warps and blocks), plain and accumulating into the residual gradient.
TEST_P(RmsNormGpu, OnePassDxDoesNotDependOnTheRowSplit) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  constexpr int kRows = 33000, kChannels = 1024, kFirst = 8, kLength = 1001;  // row 8: 16-byte aligned
  OwnedTensor x = random_tensor({kRows, kChannels}, dt, Device::cuda, 700);
  OwnedTensor w = random_tensor({kChannels}, dt, Device::cuda, 701);
  OwnedTensor dy = random_tensor({kRows, kChannels}, dt, Device::cuda, 702);
  OwnedTensor dres = random_tensor({kRows, kChannels}, dt, Device::cuda, 703);
  OwnedTensor y({kRows, kChannels}, dt, Device::cuda), rstd({kRows}, DType::f32, Device::cuda);
  OwnedTensor dx({kRows, kChannels}, dt, Device::cuda), dx_part({kLength, kChannels}, dt, Device::cuda);
  OwnedTensor dres_part = convert(dres.view().slice_rows(kFirst, kLength), dt, Device::cuda);
  OwnedTensor dw({kChannels}, DType::f32, Device::cuda);
  rmsnorm_forward(x, w, y, rstd, 1e-5f);
  auto part = [&](const OwnedTensor& t) { return t.view().slice_rows(kFirst, kLength); };
  rmsnorm_backward(x, w, rstd, dy, dx, dw, GradMode::overwrite);
  rmsnorm_backward_residual(x, w, rstd, dy, dres, dw, GradMode::overwrite);
  rmsnorm_backward(part(x), w, rstd.view().slice_rows(kFirst, kLength), part(dy), dx_part, dw, GradMode::overwrite);
  rmsnorm_backward_residual(part(x), w, rstd.view().slice_rows(kFirst, kLength), part(dy), dres_part, dw,
                            GradMode::overwrite);
  device_synchronize();
  EXPECT_EQ(to_vector(dx_part), to_vector(part(dx)));
  EXPECT_EQ(to_vector(dres_part), to_vector(part(dres)));
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
