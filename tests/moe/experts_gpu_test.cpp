// Expert FFNs on CUDA against the CPU reference on fresh random inputs: f32 and bf16, both
// layouts, all three activations, every output poisoned first.
#include <vector>

#include "moe/experts.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

struct Case {
  DType dtype;
  ExpertActivation activation;
  bool dropless;
};

const char* activation_name(ExpertActivation a) {
  return a == ExpertActivation::gelu ? "gelu" : a == ExpertActivation::relu ? "relu" : "swiglu";
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " " << activation_name(c.activation) << (c.dropless ? " dropless" : " capacity");
}

std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  const Case& c = param_info.param;
  return std::string(dtype_name(c.dtype)) + "_" + activation_name(c.activation) +
         (c.dropless ? "_dropless" : "_capacity");
}

class ExpertFFNGpu : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertFFNGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const auto [dt, activation, dropless] = GetParam();
  // f32: fp32 accumulation, no TF32 (1e-5). bf16: h, act, dact and dh are rounded to 8 bits
  // between the GEMMs (with GELU in the capacity layout, dact stays in fp32 inside the fused
  // GEMM), on top of bf16 outputs (2e-2).
  const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
  const ExpertFFNConfig config{4, 96, 80, activation};  // E_l, d, F: odd multiples, not tile sizes
  const ExpertFFN module(config);
  const std::vector<std::int64_t> expert_rows{45, 0, 130, 7};
  const Shape x_shape = dropless ? Shape{182, config.d_model} : Shape{config.local_experts, 50, config.d_model};
  const std::span<const std::int64_t> rows =
      dropless ? std::span<const std::int64_t>(expert_rows) : std::span<const std::int64_t>();
  const Shape w_in_shape{config.local_experts, config.d_model, config.d_in()};
  const Shape w_out_shape{config.local_experts, config.d_ff, config.d_model};
  const std::uint64_t seed = 500 + 10 * std::uint64_t(activation) + (dropless ? 5 : 0);

  // Weights at the scale of a trained layer's (std 1/sqrt(fan-in)) keep activations O(1).
  OwnedTensor x = random_tensor(x_shape, dt, Device::cuda, seed);
  OwnedTensor w_in = random_tensor(w_in_shape, dt, Device::cuda, seed + 1, 0.1f);
  OwnedTensor w_out = random_tensor(w_out_shape, dt, Device::cuda, seed + 2, 0.1f);
  OwnedTensor dy = random_tensor(x_shape, dt, Device::cuda, seed + 3);
  OwnedTensor dw_in = random_tensor(w_in_shape, DType::f32, Device::cuda, seed + 4);  // accumulates onto this
  OwnedTensor dw_out = random_tensor(w_out_shape, DType::f32, Device::cuda, seed + 5);
  // Overwritten (a step's first micro-batch): the dropless layout's empty expert must get zeros.
  OwnedTensor dw_in_new(w_in_shape, DType::f32, Device::cuda), dw_out_new(w_out_shape, DType::f32, Device::cuda);
  poison(dw_in_new);
  poison(dw_out_new);
  Arena arena(Device::cuda, 8 << 20);
  const ExpertActivations saved = module.alloc_activations(arena, x_shape, dt);
  const ExpertScratch scratch = module.alloc_scratch(arena, x_shape, dt);
  OwnedTensor y(x_shape, dt, Device::cuda), dx(x_shape, dt, Device::cuda);
  for (const Tensor* t : {&saved.h, &saved.act, &scratch.dact, &scratch.dh, &y.view(), &dx.view()}) {
    if (t->defined()) poison(*t);  // dact is not allocated for gelu in the capacity layout
  }

  // The reference runs in f64 on the same (already rounded) inputs.
  OwnedTensor xc = convert(x, DType::f64, Device::cpu), w_inc = convert(w_in, DType::f64, Device::cpu);
  OwnedTensor w_outc = convert(w_out, DType::f64, Device::cpu), dyc = convert(dy, DType::f64, Device::cpu);
  OwnedTensor dw_inc = convert(dw_in, DType::f32, Device::cpu), dw_outc = convert(dw_out, DType::f32, Device::cpu);
  OwnedTensor dw_in_newc(w_in_shape, DType::f32, Device::cpu), dw_out_newc(w_out_shape, DType::f32, Device::cpu);
  poison(dw_in_newc);
  poison(dw_out_newc);
  Arena arena_c(Device::cpu, 8 << 20);
  const ExpertActivations saved_c = module.alloc_activations(arena_c, x_shape, DType::f64);
  const ExpertScratch scratch_c = module.alloc_scratch(arena_c, x_shape, DType::f64);
  OwnedTensor yc(x_shape, DType::f64, Device::cpu), dxc(x_shape, DType::f64, Device::cpu);

  module.forward(x, rows, {w_in, w_out}, saved, y);
  module.backward(x, rows, {w_in, w_out}, saved, dy, dx, {dw_in, dw_out}, scratch, GradMode::accumulate);
  module.backward(x, rows, {w_in, w_out}, saved, dy, dx, {dw_in_new, dw_out_new}, scratch, GradMode::overwrite);
  device_synchronize();
  module.forward(xc, rows, {w_inc, w_outc}, saved_c, yc);
  module.backward(xc, rows, {w_inc, w_outc}, saved_c, dyc, dxc, {dw_inc, dw_outc}, scratch_c, GradMode::accumulate);
  module.backward(xc, rows, {w_inc, w_outc}, saved_c, dyc, dxc, {dw_in_newc, dw_out_newc}, scratch_c,
                  GradMode::overwrite);

  EXPECT_LT(relative_error(saved.h, saved_c.h), tol);
  EXPECT_LT(relative_error(y, yc), tol);
  EXPECT_LT(relative_error(dx, dxc), tol);
  EXPECT_LT(relative_error(dw_in, dw_inc), tol);
  EXPECT_LT(relative_error(dw_out, dw_outc), tol);
  EXPECT_LT(relative_error(dw_in_new, dw_in_newc), tol);  // a NaN left anywhere fails
  EXPECT_LT(relative_error(dw_out_new, dw_out_newc), tol);
  if (dropless) {  // expert 1 owns no rows: exactly zero
    const std::vector<double> got = to_vector(dw_out_new);
    const std::size_t per_expert = std::size_t(config.d_ff * config.d_model);
    for (std::size_t i = per_expert; i < 2 * per_expert; ++i) ASSERT_EQ(got[i], 0.0) << i;
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (DType dt : {DType::f32, DType::bf16})
    for (ExpertActivation a : {ExpertActivation::gelu, ExpertActivation::relu, ExpertActivation::swiglu})
      for (bool dropless : {false, true}) cases.push_back({dt, a, dropless});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Layouts, ExpertFFNGpu, ::testing::ValuesIn(all_cases()), case_name);

}  // namespace
}  // namespace sy::test
