// Router CUDA path against the CPU reference on fresh inputs of awkward sizes, f32 and bf16 x,
// every noise kind and drop policy, forward outputs poisoned first, and gradients both added to
// random starting values (GradMode::accumulate) and written over NaN (overwrite). The whole router: integer outputs (experts, slots, counts) must match
// exactly, so the logits are built well separated (see router_inputs). The fused x·W kernels on
// their own: random x and weights of sizes that take each of their paths.
#include <cmath>
#include <sstream>

#include "moe/router.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

struct RouterInputs {
  OwnedTensor x, w, wn;
};

// x = [target logits | 8 random features], Wr = [identity; 0], so the logits are exactly the
// targets on both devices (fp32 products with 0 and 1 are exact) while dW and dx still see every
// feature. Token n's targets are a permutation of levels 0.05 * i * s_n with a distinct
// temperature s_n in [1, 3): within a token the logits are 0.05 apart (top-k has no near-ties,
// even after 1e-3 jitter), and across tokens the gates differ by far more than f32 rounding, so
// the probability order is the same on both devices (bf16 may round rows to identical values:
// exact ties, which both break by token index). Wn is -12 on a constant feature: softplus(-12)
// ~ 6e-6 keeps the Gaussian noise from creating near-ties. Jitter reorders gates at random, so
// the cases below pair it with the position policy.
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

// What backward adds to: dx [N, d] x's dtype, dW and dWn [d, E] f32.
struct RouterGrads {
  OwnedTensor dx, dw, dwn;
};

RouterGrads grads_on(const RouterGrads& g, Device device) {
  return {convert(g.dx, g.dx.view().dtype(), device), convert(g.dw, DType::f32, device),
          convert(g.dwn, DType::f32, device)};
}

// The gradients of a state on `device` (its tensors' device), the weights' overwritten over NaN
// and dx from zero: on the CPU state, the reference's plain gradients.
RouterGrads overwritten_gradients(const RouterState& st, const Tensor& w, const Tensor& wn, const Tensor& dgate,
                                  Arena& arena, Device device) {
  const std::int64_t N = st.x.size(0), d = st.x.size(1);
  const int E = st.settings.experts;
  RouterGrads g{zeros({N, d}, st.x.dtype(), device), OwnedTensor({d, E}, DType::f32, device),
                OwnedTensor({d, E}, DType::f32, device)};
  poison(g.dw);
  poison(g.dwn);
  router_backward(st, w, wn, dgate, g.dx, g.dw, g.dwn, GradMode::overwrite, arena);
  if (device == Device::cuda) device_synchronize();
  return g;
}

// Random values with the RMS of `like` (1 where it is all zero), so that after backward has
// added a gradient like `like`, a comparison checks both the start and what was added.
OwnedTensor start_like(const Tensor& like, DType dtype, std::uint64_t seed) {
  const std::vector<double> v = to_vector(like);
  double squares = 0;
  for (double a : v) squares += a * a;
  const double rms = squares > 0 ? std::sqrt(squares / double(v.size())) : 1.0;
  std::vector<double> start = to_vector(random_tensor(like.shape(), DType::f64, Device::cpu, seed));
  for (double& a : start) a *= rms;
  OwnedTensor out(like.shape(), dtype, Device::cpu);
  from_vector(out, start);
  return out;
}

RouterGrads start_like(const RouterGrads& plain, std::uint64_t seed) {
  return {start_like(plain.dx, plain.dx.view().dtype(), seed), start_like(plain.dw, DType::f32, seed + 1),
          start_like(plain.dwn, DType::f32, seed + 2)};
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
  // f32: summation order only (1e-5; dx and dW also take dlogits in f32 against double: 1e-4).
  // bf16: dx is rounded to 8 bits (1e-2); the other outputs are f32 from the same rounded inputs.
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
    OwnedTensor x = convert(in.x, gc.dtype, Device::cuda), w = convert(in.w, DType::f32, Device::cuda);
    OwnedTensor wn = convert(in.wn, DType::f32, Device::cuda);
    OwnedTensor dgate_cpu = random_tensor({N, k}, DType::f32, Device::cpu, seed + 3);
    OwnedTensor dgate = convert(dgate_cpu, DType::f32, Device::cuda);

    Arena arena(Device::cuda, 64 << 20), arena_cpu(Device::cpu, 64 << 20);
    poison(arena.alloc({(64 << 20) / 4 - 1024}, DType::f32));  // every output the forward allocates
    arena.reset();
    RouterState st, ref;
    const RngKey key{77, 0, 4};
    router_forward(s, x, w, wn, true, key, 12345, arena, st);
    router_forward(s, in.x, in.w, in.wn, true, key, 12345, arena_cpu, ref);
    // Backward adds to dx, dW and dWn: both devices start from the same random values.
    const RouterGrads plain = overwritten_gradients(ref, in.w, in.wn, dgate_cpu, arena_cpu, Device::cpu);
    const RouterGrads start = start_like(plain, seed + 4);
    RouterGrads got = grads_on(start, Device::cuda), expected = grads_on(start, Device::cpu);
    router_backward(st, w, wn, dgate, got.dx, got.dw, got.dwn, GradMode::accumulate, arena);
    device_synchronize();
    router_backward(ref, in.w, in.wn, dgate_cpu, expected.dx, expected.dw, expected.dwn, GradMode::accumulate,
                    arena_cpu);
    const RouterGrads overwritten = overwritten_gradients(st, w, wn, dgate, arena, Device::cuda);

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
    EXPECT_LT(relative_error(got.dx, expected.dx), grad_tol);
    EXPECT_LT(relative_error(got.dw, expected.dw), 1e-4);
    EXPECT_LT(relative_error(got.dwn, expected.dwn), 1e-4);
    // Overwritten: the plain gradients, a NaN left anywhere fails (dWn is zero without Gaussian noise).
    EXPECT_LT(relative_error(overwritten.dw, plain.dw), 1e-4);
    EXPECT_LT(relative_error(overwritten.dwn, plain.dwn), 1e-4);
    if (gc.noise != RouterNoise::gaussian) {
      EXPECT_EQ(to_vector(overwritten.dwn), std::vector<double>(std::size_t(plain.dwn.view().numel()), 0.0));
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

TEST(RouterGpuTest, ForwardAndBackwardAreBitReproducible) {
  SY_REQUIRE_GPU();
  RouterSettings s;
  s.experts = 64;
  s.top_k = 2;
  s.drop_policy = DropPolicy::probability;
  OwnedTensor x = random_tensor({4099, 96}, DType::bf16, Device::cuda, 41);
  OwnedTensor w = random_tensor({96, 64}, DType::f32, Device::cuda, 42, 0.1f);
  OwnedTensor dgate = random_tensor({4099, 2}, DType::f32, Device::cuda, 43);
  Arena arena(Device::cuda, 64 << 20);
  RouterState a, b;
  router_forward(s, x, w, Tensor{}, true, RngKey{3, 0, 0}, 0, arena, a);
  router_forward(s, x, w, Tensor{}, true, RngKey{3, 0, 0}, 0, arena, b);
  OwnedTensor dx_a = zeros({4099, 96}, DType::bf16, Device::cuda), dx_b = zeros({4099, 96}, DType::bf16, Device::cuda);
  OwnedTensor dw_a({96, 64}, DType::f32, Device::cuda), dw_b({96, 64}, DType::f32, Device::cuda);
  poison(dw_a);
  poison(dw_b);
  router_backward(a, w, Tensor{}, dgate, dx_a, dw_a, Tensor{}, GradMode::overwrite, arena);
  router_backward(b, w, Tensor{}, dgate, dx_b, dw_b, Tensor{}, GradMode::overwrite, arena);
  device_synchronize();
  EXPECT_EQ(to_vector(a.routing.slot), to_vector(b.routing.slot));
  EXPECT_EQ(to_vector(a.logits), to_vector(b.logits));
  EXPECT_EQ(to_vector(a.probs), to_vector(b.probs));
  EXPECT_EQ(to_vector(a.aux_loss), to_vector(b.aux_loss));
  EXPECT_EQ(to_vector(a.z_loss), to_vector(b.z_loss));
  EXPECT_EQ(to_vector(dx_a), to_vector(dx_b));
  EXPECT_EQ(to_vector(dw_a), to_vector(dw_b));
}

// The GPU forward's state with its tensors copied to the CPU (x: the CPU copy of the input).
RouterState state_on_cpu(const RouterState& gpu, const Tensor& x_cpu, Arena& arena) {
  RouterState cpu = gpu;
  cpu.x = x_cpu;
  Routing& r = cpu.routing;
  for (Tensor* t : {&r.expert, &r.gate, &r.slot, &r.expert_counts, &cpu.logits, &cpu.noise_logits, &cpu.noise,
                    &cpu.probs, &cpu.lse, &cpu.aux_loss, &cpu.z_loss, &cpu.tokens_per_expert, &cpu.dropped_fraction,
                    &cpu.aux_grad, &cpu.z_grad}) {
    if (!t->defined()) continue;
    const Tensor host = arena.alloc(t->shape(), t->dtype());
    copy(host, *t);
    *t = host;
  }
  device_synchronize();
  return cpu;
}

struct KernelCase {
  std::int64_t tokens;
  std::int64_t d;
  int experts;
  int top_k;
  RouterNoise noise;
  DType dtype;
};

class RouterGpuKernels : public ::testing::TestWithParam<KernelCase> {};

// The fused x·W kernels on random x and weights. Logits are compared with the reference's
// forward; the gradients with the reference's backward run on the GPU forward's own state: on
// random data a near tie can route a token differently on the two devices, which changes the
// gradients without being a kernel error.
TEST_P(RouterGpuKernels, LogitsAndGradientsMatchCpuReference) {
  SY_REQUIRE_GPU();
  const KernelCase kc = GetParam();
  const std::int64_t N = kc.tokens, d = kc.d;
  const int E = kc.experts;
  RouterSettings s;
  s.experts = E;
  s.top_k = kc.top_k;
  s.noise = kc.noise;
  s.jitter_eps = 0.1f;  // large, so that a jitter factor drawn for the wrong element shows
  s.capacity_factor = 1.0;  // some choices dropped
  s.aux_loss_coef = 0.1f;
  s.z_loss_coef = 0.01f;
  const std::uint64_t seed = 900 + std::uint64_t(N + 3 * d + 7 * E);
  const float w_std = float(1.0 / std::sqrt(double(d)));  // logits of about unit size
  OwnedTensor x_cpu = random_tensor({N, d}, kc.dtype, Device::cpu, seed);
  OwnedTensor w_cpu = random_tensor({d, E}, DType::f32, Device::cpu, seed + 1, w_std);
  OwnedTensor wn_cpu = random_tensor({d, E}, DType::f32, Device::cpu, seed + 2, w_std);
  OwnedTensor dgate_cpu = random_tensor({N, kc.top_k}, DType::f32, Device::cpu, seed + 3);
  OwnedTensor x = convert(x_cpu, kc.dtype, Device::cuda), w = convert(w_cpu, DType::f32, Device::cuda);
  OwnedTensor wn = convert(wn_cpu, DType::f32, Device::cuda), dgate = convert(dgate_cpu, DType::f32, Device::cuda);
  Arena arena(Device::cuda, 64 << 20), arena_cpu(Device::cpu, 64 << 20);
  const RngKey key{91, 0, 2};
  const std::int64_t first_token = 4321;  // jitter counters start at first_token * d
  RouterState st, ref;
  router_forward(s, x, w, wn, true, key, first_token, arena, st);
  router_forward(s, x_cpu, w_cpu, wn_cpu, true, key, first_token, arena_cpu, ref);
  device_synchronize();
  // f32 sums of d products in a fixed order against double sums: 1e-5.
  EXPECT_LT(relative_error(st.logits, ref.logits), 1e-5);
  if (kc.noise == RouterNoise::gaussian) {
    EXPECT_LT(relative_error(st.noise_logits, ref.noise_logits), 1e-5);
  }

  const RouterState on_cpu = state_on_cpu(st, x_cpu, arena_cpu);
  const RouterGrads plain = overwritten_gradients(on_cpu, w_cpu, wn_cpu, dgate_cpu, arena_cpu, Device::cpu);
  const RouterGrads start = start_like(plain, seed + 4);
  RouterGrads got = grads_on(start, Device::cuda), expected = grads_on(start, Device::cpu);
  router_backward(st, w, wn, dgate, got.dx, got.dw, got.dwn, GradMode::accumulate, arena);
  device_synchronize();
  router_backward(on_cpu, w_cpu, wn_cpu, dgate_cpu, expected.dx, expected.dw, expected.dwn, GradMode::accumulate,
                  arena_cpu);
  const RouterGrads overwritten = overwritten_gradients(st, w, wn, dgate, arena, Device::cuda);
  // The starts have the gradients' size, so the sums check what was added as well.
  ASSERT_GT(relative_error(expected.dx, start.dx), 0.5) << "dx: the gradient is negligible next to the start";
  ASSERT_GT(relative_error(expected.dw, start.dw), 0.5) << "dW: the gradient is negligible next to the start";
  // dx and dW take dlogits in f32 against double and sum in f32 (over E, and over N rows): 1e-4.
  // bf16 dx: the sum is rounded to 8 bits (once per 256 experts): 1e-2.
  EXPECT_LT(relative_error(got.dx, expected.dx), kc.dtype == DType::f32 ? 1e-4 : 1e-2);
  EXPECT_LT(relative_error(got.dw, expected.dw), 1e-4);
  if (kc.noise == RouterNoise::gaussian) {
    EXPECT_LT(relative_error(got.dwn, expected.dwn), 1e-4);
  } else {
    EXPECT_EQ(to_vector(got.dwn), to_vector(start.dwn)) << "dWn is touched only for Gaussian noise";
  }
  // Overwritten over NaN: the plain gradients (both weight-gradient paths: E <= 8 without noise
  // takes the row-lane kernel); dWn is zero without Gaussian noise.
  EXPECT_LT(relative_error(overwritten.dw, plain.dw), 1e-4);
  EXPECT_LT(relative_error(overwritten.dwn, plain.dwn), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, RouterGpuKernels,
    ::testing::Values(
        // The Switch shape: 16-byte loads, weights loaded once per block; the input gradient
        // takes its warp-per-token path (E <= 16, d a multiple of 8) and, without Gaussian
        // noise, the weight gradient its row-lane path (E <= 8).
        KernelCase{1000, 768, 8, 1, RouterNoise::jitter, DType::bf16},
        KernelCase{1000, 768, 8, 2, RouterNoise::gaussian, DType::f32},
        // 12 experts: the warp-per-token input gradient's 16-wide tile, padded.
        KernelCase{500, 256, 12, 2, RouterNoise::gaussian, DType::bf16},
        // 6 experts over 64 channels: the row-lane weight gradient with four token lanes and
        // padded experts, and the input gradient's 8-wide tile padded.
        KernelCase{300, 64, 6, 2, RouterNoise::jitter, DType::f32},
        // Token counts that leave the warp-per-token kernels a partial last group (a warp takes 4
        // tokens at a time for E <= 8 in the logits, 2 otherwise); d not a multiple of 256.
        KernelCase{1003, 256, 8, 1, RouterNoise::none, DType::bf16},
        KernelCase{501, 136, 12, 2, RouterNoise::jitter, DType::f32},
        // d a multiple of 8 but not of 64: the warps' channel slices are uneven.
        KernelCase{1000, 200, 8, 1, RouterNoise::none, DType::f32},
        // 64 experts: two register tiles of 32 in the logits kernel, two in the weight gradient.
        KernelCase{1000, 200, 64, 2, RouterNoise::jitter, DType::bf16},
        // Wr (and Wn) too large for one shared-memory chunk: the kernels take d chunk by chunk.
        KernelCase{1000, 768, 64, 2, RouterNoise::jitter, DType::f32},
        KernelCase{1000, 768, 64, 1, RouterNoise::gaussian, DType::bf16},
        // d % 8 = 4: scalar x·W kernels, 4-wide weight-gradient loads.
        KernelCase{1000, 100, 8, 2, RouterNoise::jitter, DType::bf16},
        // Odd d (scalar everywhere), E not a multiple of 4, one partial token tile.
        KernelCase{37, 203, 5, 1, RouterNoise::jitter, DType::bf16},
        // 256 experts: the input gradient stages all of them at once (the most shared memory).
        KernelCase{300, 96, 256, 4, RouterNoise::none, DType::bf16},
        // 300 experts: the input gradient in two passes (256 + 44), odd d.
        KernelCase{777, 203, 300, 2, RouterNoise::gaussian, DType::f32}),
    [](const ::testing::TestParamInfo<KernelCase>& param_info) {
      const KernelCase& c = param_info.param;
      std::ostringstream name;  // a stream: GCC 12 warns (-Wrestrict) on chains of string +
      name << dtype_name(c.dtype) << "_" << router_noise_name(c.noise) << "_N" << c.tokens << "_d" << c.d << "_E"
           << c.experts << "_k" << c.top_k;
      return name.str();
    });

// No tokens: accumulating leaves the weight gradients unchanged, overwriting writes zeros.
TEST(RouterGpuTest, NoTokensAddNothingAndOverwriteZeros) {
  SY_REQUIRE_GPU();
  RouterSettings s;
  s.experts = 8;
  s.noise = RouterNoise::gaussian;
  Arena arena(Device::cuda, 16 << 20);
  const Tensor x = arena.alloc({0, 64}, DType::bf16), dx = arena.alloc({0, 64}, DType::bf16);
  const Tensor dgate = arena.alloc({0, 1}, DType::f32);
  OwnedTensor w = random_tensor({64, 8}, DType::f32, Device::cuda, 51);
  OwnedTensor wn = random_tensor({64, 8}, DType::f32, Device::cuda, 52);
  OwnedTensor dw_start = random_tensor({64, 8}, DType::f32, Device::cpu, 53);
  OwnedTensor dwn_start = random_tensor({64, 8}, DType::f32, Device::cpu, 54);
  OwnedTensor dw = convert(dw_start, DType::f32, Device::cuda), dwn = convert(dwn_start, DType::f32, Device::cuda);
  RouterState st;
  router_forward(s, x, w, wn, true, RngKey{5, 0, 0}, 0, arena, st);
  router_backward(st, w, wn, dgate, dx, dw, dwn, GradMode::accumulate, arena);
  device_synchronize();
  EXPECT_EQ(to_vector(st.routing.expert_counts), std::vector<double>(8, 0.0));
  EXPECT_EQ(to_vector(st.aux_loss)[0], 0.0);
  EXPECT_EQ(to_vector(dw), to_vector(dw_start));
  EXPECT_EQ(to_vector(dwn), to_vector(dwn_start));
  poison(dw);
  poison(dwn);
  router_backward(st, w, wn, dgate, dx, dw, dwn, GradMode::overwrite, arena);
  device_synchronize();
  EXPECT_EQ(to_vector(dw), std::vector<double>(64 * 8, 0.0));
  EXPECT_EQ(to_vector(dwn), std::vector<double>(64 * 8, 0.0));
}

}  // namespace
}  // namespace sy::test
