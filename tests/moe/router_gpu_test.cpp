// Router CUDA path against the CPU reference on fresh inputs of awkward sizes, f32 and bf16 x,
// every noise kind and drop policy, outputs poisoned first. Integer outputs (experts, slots,
// counts) must match exactly, so the logits are built well separated (see router_inputs).
#include <cmath>

#include "moe/router.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

struct RouterInputs {
  OwnedTensor x, w, wn;
};

// x = [target logits | 8 random features], Wr = [identity; 0], so the logits are exactly the
// targets on both devices (fp32 GEMM, no TF32) while dW and dx still see every feature. Token
// n's targets are a permutation of levels 0.05 * i * s_n with a distinct temperature s_n in
// [1, 3): within a token the logits are 0.05 apart (top-k has no near-ties, even after 1e-3
// jitter), and across tokens the gates differ by far more than f32 rounding, so the probability
// order is the same on both devices (bf16 may round rows to identical values: exact ties, which
// both break by token index). Wn is -12 on a constant feature: softplus(-12) ~ 6e-6 keeps the
// Gaussian noise from creating near-ties. Jitter reorders gates at random, so the cases below
// pair it with the position policy.
RouterInputs router_inputs(std::int64_t N, int E, DType dt, std::uint64_t seed) {
  const std::int64_t d = E + 8;
  std::vector<double> x(std::size_t(N * d)), w(std::size_t(d * E), 0.0), wn(std::size_t(d * E));
  const std::vector<double> features = to_vector(random_tensor({N, 8}, DType::f64, Device::cpu, seed));
  const std::vector<double> noise_w = to_vector(random_tensor({d, E}, DType::f64, Device::cpu, seed + 2, 0.3f));
  for (std::int64_t n = 0; n < N; ++n) {
    const double temperature = 1.0 + 2.0 * double((n * 7919) % N) / double(N);
    for (int e = 0; e < E; ++e) {
      const std::int64_t level = (e * 37 + n * 11) % E;  // 37 is coprime with 8 and 64: a permutation
      x[std::size_t(n * d + e)] = 0.05 * double(level) * temperature;
    }
    for (int f = 0; f < 8; ++f) x[std::size_t(n * d + E + f)] = f == 0 ? 1.0 : features[std::size_t(n * 8 + f)];
  }
  for (int e = 0; e < E; ++e) w[std::size_t(e * E + e)] = 1.0;
  for (std::int64_t i = 0; i < d * E; ++i) wn[std::size_t(i)] = noise_w[std::size_t(i)] * 1e-3;
  for (int e = 0; e < E; ++e) wn[std::size_t(E * E + e)] = -12.0;  // row of the constant feature
  RouterInputs in{OwnedTensor({N, d}, dt, Device::cpu), OwnedTensor({d, E}, DType::f32, Device::cpu),
                  OwnedTensor({d, E}, DType::f32, Device::cpu)};
  from_vector(in.x, x);
  from_vector(in.w, w);
  from_vector(in.wn, wn);
  return in;
}

struct GpuCase {
  DType dtype;
  RouterNoise noise;
  DropPolicy policy;
  bool renormalize;
};

class RouterGpu : public ::testing::TestWithParam<GpuCase> {};

TEST_P(RouterGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const GpuCase gc = GetParam();
  // f32: summation order only (1e-5; dx and dW go through cuBLAS: 1e-4). bf16: dx is rounded
  // to 8 bits (1e-2); the other outputs are f32 from the same rounded inputs.
  const double tol = 1e-5, grad_tol = gc.dtype == DType::f32 ? 1e-4 : 1e-2;
  for (auto [N, E, k] : {std::tuple{1000, 8, 1}, std::tuple{1000, 64, 2}, std::tuple{37, 8, 2}, std::tuple{37, 64, 1}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " E=" << E << " k=" << k);
    RouterSettings s;
    s.experts = E;
    s.top_k = k;
    s.noise = gc.noise;
    s.jitter_eps = 1e-3f;
    s.drop_policy = gc.policy;
    s.renormalize = gc.renormalize && k > 1;  // k = 1 renormalised is a constant gate of 1
    s.capacity_factor = 0.9;  // drops on the unbalanced experts
    s.aux_loss_coef = 0.1f;
    s.z_loss_coef = 0.01f;
    const std::uint64_t seed = 500 + std::uint64_t(N * 7 + E + k);
    const RouterInputs in = router_inputs(N, E, gc.dtype, seed);
    const std::int64_t d = in.x.view().size(1);
    OwnedTensor x = convert(in.x, gc.dtype, Device::cuda), w = convert(in.w, DType::f32, Device::cuda);
    OwnedTensor wn = convert(in.wn, DType::f32, Device::cuda);
    OwnedTensor dgate_cpu = random_tensor({N, k}, DType::f32, Device::cpu, seed + 3);
    OwnedTensor dgate = convert(dgate_cpu, DType::f32, Device::cuda);
    OwnedTensor dw_cpu = random_tensor({d, E}, DType::f32, Device::cpu, seed + 4);  // accumulates onto this
    OwnedTensor dwn_cpu = random_tensor({d, E}, DType::f32, Device::cpu, seed + 5);
    OwnedTensor dw = convert(dw_cpu, DType::f32, Device::cuda), dwn = convert(dwn_cpu, DType::f32, Device::cuda);
    OwnedTensor dx({N, d}, gc.dtype, Device::cuda), dx_cpu({N, d}, gc.dtype, Device::cpu);
    poison(dx);

    Arena arena(Device::cuda, 64 << 20), arena_cpu(Device::cpu, 64 << 20);
    poison(arena.alloc({(64 << 20) / 4 - 1024}, DType::f32));  // every output the forward allocates
    arena.reset();
    RouterState st, ref;
    const RngKey key{77, 0, 4};
    router_forward(s, x, w, wn, true, key, 12345, arena, st);
    router_backward(st, w, wn, dgate, dx, dw, dwn, arena);
    device_synchronize();
    router_forward(s, in.x, in.w, in.wn, true, key, 12345, arena_cpu, ref);
    router_backward(ref, in.w, in.wn, dgate_cpu, dx_cpu, dw_cpu, dwn_cpu, arena_cpu);

    EXPECT_EQ(to_vector(st.routing.expert), to_vector(ref.routing.expert));
    EXPECT_EQ(to_vector(st.routing.slot), to_vector(ref.routing.slot));
    EXPECT_EQ(to_vector(st.routing.expert_counts), to_vector(ref.routing.expert_counts));
    EXPECT_EQ(to_vector(st.tokens_per_expert), to_vector(ref.tokens_per_expert));
    EXPECT_EQ(st.routing.capacity, ref.routing.capacity);
    EXPECT_LT(relative_error(st.routing.gate, ref.routing.gate), tol);
    EXPECT_LT(relative_error(st.logits, ref.logits), tol);
    EXPECT_LT(relative_error(st.probs, ref.probs), tol);
    EXPECT_LT(relative_error(st.lse, ref.lse), tol);
    EXPECT_LT(relative_error(st.aux_loss, ref.aux_loss), tol);
    EXPECT_LT(relative_error(st.z_loss, ref.z_loss), tol);
    EXPECT_LT(relative_error(st.dropped_fraction, ref.dropped_fraction), tol);
    if (gc.noise == RouterNoise::gaussian) {
      EXPECT_LT(relative_error(st.noise, ref.noise), 1e-6);
    }
    EXPECT_LT(relative_error(dx, dx_cpu), grad_tol);
    EXPECT_LT(relative_error(dw, dw_cpu), 1e-4);
    if (gc.noise == RouterNoise::gaussian) {
      EXPECT_LT(relative_error(dwn, dwn_cpu), 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RouterGpu,
    // Probability order with renormalised gates is compared in f32 only: after bf16 rounding of
    // x, different tokens can have gates equal in exact arithmetic that float rounds apart
    // differently on the two devices (a tie broken two ways, not a routing difference).
    ::testing::Values(GpuCase{DType::f32, RouterNoise::none, DropPolicy::position, false},
                      GpuCase{DType::f32, RouterNoise::none, DropPolicy::probability, true},
                      GpuCase{DType::f32, RouterNoise::gaussian, DropPolicy::probability, false},
                      GpuCase{DType::f32, RouterNoise::jitter, DropPolicy::dropless, false},
                      GpuCase{DType::bf16, RouterNoise::jitter, DropPolicy::position, true},
                      GpuCase{DType::bf16, RouterNoise::gaussian, DropPolicy::position, false},
                      GpuCase{DType::bf16, RouterNoise::none, DropPolicy::position, true}),
    [](const ::testing::TestParamInfo<GpuCase>& param_info) {
      const GpuCase& c = param_info.param;
      return std::string(dtype_name(c.dtype)) + "_" + router_noise_name(c.noise) + "_" +
             drop_policy_name(c.policy) + (c.renormalize ? "_renorm" : "");
    });

TEST(RouterGpuTest, ForwardIsBitReproducible) {
  SY_REQUIRE_GPU();
  RouterSettings s;
  s.experts = 64;
  s.top_k = 2;
  s.drop_policy = DropPolicy::probability;
  OwnedTensor x = random_tensor({4099, 96}, DType::bf16, Device::cuda, 41);
  OwnedTensor w = random_tensor({96, 64}, DType::f32, Device::cuda, 42);
  Arena arena(Device::cuda, 64 << 20);
  RouterState a, b;
  router_forward(s, x, w, Tensor{}, true, RngKey{3, 0, 0}, 0, arena, a);
  router_forward(s, x, w, Tensor{}, true, RngKey{3, 0, 0}, 0, arena, b);
  device_synchronize();
  EXPECT_EQ(to_vector(a.routing.slot), to_vector(b.routing.slot));
  EXPECT_EQ(to_vector(a.probs), to_vector(b.probs));
  EXPECT_EQ(to_vector(a.aux_loss), to_vector(b.aux_loss));
  EXPECT_EQ(to_vector(a.z_loss), to_vector(b.z_loss));
}

}  // namespace
}  // namespace sy::test
