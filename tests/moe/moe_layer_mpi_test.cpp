// Layout equivalence of the MoE layer: the same global layer (E experts, router noise on) gives
// the same outputs and gradients whether each rank holds all experts (ep = 1) or the experts are
// spread over ep = 2 or 4 ranks, in capacity and dropless modes. Every rank builds the full
// weights from the global RNG and routes its own tokens; expert gradients at ep = 1 summed over
// the ranks that would share an ep group equal the ep-sharded gradients. Gradients are written
// over NaN (GradMode::overwrite, a step's first micro-batch) unless a test says otherwise, so an
// element the layer forgets fails; with half the experts unreachable, experts and whole ranks get
// no tokens and must still write zeros.
#include <algorithm>

#include "moe/moe_layer.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

constexpr std::int64_t kTokens = 13, kModel = 6, kFf = 5;

struct Params {
  bool dropless;
  RouterNoise noise;
  ExpertActivation activation;
};

struct Result {
  std::vector<double> out, dx, dw_router, dw_noise, dw_in, dw_out;  // expert grads of ALL experts (zeros elsewhere)
};

OwnedTensor global_weight(const Shape& shape, std::uint64_t seed, double std_dev) {
  return random_tensor(shape, DType::f64, Device::cpu, seed, float(std_dev));
}

struct RunOptions {
  bool recompute = false;  // keep only the experts' pre-activation, recompute the activation in backward
  int chunks = 1;          // pieces per exchange (pipelined dispatch and combine)
  // Backward's mode: overwrite writes over NaN; accumulate adds onto zeros (the result then equals
  // an overwrite's), and `twice` runs backward once more in accumulate mode.
  GradMode mode = GradMode::overwrite;
  bool twice = false;
  // Every token carries a constant feature that the router weighs at -50 for experts E/2 .. E-1,
  // so no token is routed there: those experts, and at ep = world size whole ranks, get no rows.
  bool starve_upper_experts = false;
};

// Runs forward and backward with the experts spread over `ep` (a communicator of ep ranks).
Result run(const Params& p, Communicator& world, Communicator& ep, const RunOptions& o = {}) {
  const int experts = 8;
  MoeLayerConfig config;
  config.router.experts = experts;
  config.router.top_k = 2;
  config.router.noise = p.noise;
  config.router.drop_policy = p.dropless ? DropPolicy::dropless : DropPolicy::position;
  config.router.capacity_factor = 1.0;  // tight: some tokens drop
  config.d_model = kModel;
  config.d_ff = kFf;
  config.activation = p.activation;
  config.recompute_activation = o.recompute;
  config.dispatch_chunks = o.chunks;
  MoeLayer layer(config, MoeGroups{&ep, nullptr, nullptr});
  const std::int64_t local = layer.local_experts(), first_expert = ep.rank() * local;
  const std::int64_t f_in = p.activation == ExpertActivation::swiglu ? 2 * kFf : kFf;

  OwnedTensor w_router = global_weight({kModel, experts}, 1, 0.5), w_noise = global_weight({kModel, experts}, 2, 0.5);
  if (o.starve_upper_experts) {  // row 0 of Wr meets the constant feature x[:, 0] = 3
    std::vector<double> wr = to_vector(w_router);
    for (int e = 0; e < experts; ++e) wr[std::size_t(e)] = e < experts / 2 ? 0.0 : -50.0;
    from_vector(w_router, wr);
  }
  OwnedTensor w_in_all = global_weight({experts, kModel, f_in}, 3, 0.4), w_out_all = global_weight({experts, kFf, kModel}, 4, 0.4);
  MoeWeights weights{w_router, w_noise, {w_in_all.view().slice_rows(first_expert, local), w_out_all.view().slice_rows(first_expert, local)}};
  OwnedTensor dw_router = zeros({kModel, experts}, DType::f64, Device::cpu), dw_noise = zeros({kModel, experts}, DType::f64, Device::cpu);
  // Expert gradients are f32 by the parameter-gradient convention.
  OwnedTensor dw_in_all = zeros({experts, kModel, f_in}, DType::f32, Device::cpu), dw_out_all = zeros({experts, kFf, kModel}, DType::f32, Device::cpu);
  MoeGrads grads{dw_router, dw_noise, {dw_in_all.view().slice_rows(first_expert, local), dw_out_all.view().slice_rows(first_expert, local)}};
  if (o.mode == GradMode::overwrite) {
    // This rank's gradients hold garbage; the other ranks' expert rows stay zero for the sums.
    for (const Tensor* g : {&grads.w_router, &grads.w_noise, &grads.experts.w_in, &grads.experts.w_out}) poison(*g);
  }

  // Tokens of this world rank: the same at every ep.
  OwnedTensor x = random_tensor({kTokens, kModel}, DType::f64, Device::cpu, 100 + std::uint64_t(world.rank()));
  if (o.starve_upper_experts) {
    std::vector<double> xv = to_vector(x);
    for (std::int64_t n = 0; n < kTokens; ++n) xv[std::size_t(n * kModel)] = 3.0;
    from_vector(x, xv);
  }
  OwnedTensor dout = random_tensor({kTokens, kModel}, DType::f64, Device::cpu, 200 + std::uint64_t(world.rank()));
  OwnedTensor out({kTokens, kModel}, DType::f64, Device::cpu), dx({kTokens, kModel}, DType::f64, Device::cpu);
  poison(out);
  poison(dx);
  Arena arena(Device::cpu, std::size_t(1) << 22);
  layer.forward(x, weights, true, RngKey{77, 0, 3}, world.rank() * kTokens, arena, out);
  layer.backward(dout, weights, arena, dx, grads, o.mode);
  if (o.twice) layer.backward(dout, weights, arena, dx, grads, GradMode::accumulate);
  return {to_vector(out), to_vector(dx), to_vector(dw_router), to_vector(dw_noise), to_vector(dw_in_all), to_vector(dw_out_all)};
}

class MoeLayerLayouts : public ::testing::TestWithParam<Params> {};

// Recomputing the activation in backward repeats the forward's exact operation: bitwise equal.
TEST_P(MoeLayerLayouts, RecomputedActivationGivesIdenticalResults) {
  Communicator& world = sy::test::world(Device::cpu);
  auto ep = world.split(world.rank() / world.size(), world.rank(), "ep");
  for (int chunks : {1, 3}) {
    SCOPED_TRACE(::testing::Message() << "chunks=" << chunks);
    const Result kept = run(GetParam(), world, *ep, {.chunks = chunks});
    const Result recomputed = run(GetParam(), world, *ep, {.recompute = true, .chunks = chunks});
    EXPECT_EQ(recomputed.out, kept.out);
    EXPECT_EQ(recomputed.dx, kept.dx);
    EXPECT_EQ(recomputed.dw_router, kept.dw_router);
    EXPECT_EQ(recomputed.dw_in, kept.dw_in);
    EXPECT_EQ(recomputed.dw_out, kept.dw_out);
  }
}

// Also with the exchanges pipelined in 3 chunks: the same rows meet the same experts, only in
// another order, so outputs and input gradients agree to rounding and expert gradients to f32.
TEST_P(MoeLayerLayouts, SameOutputsAndGradientsAtEveryEpSizeAndChunking) {
  Communicator& world = sy::test::world(Device::cpu);
  auto alone = world.split(world.rank(), 0, "ep");
  const Result reference = run(GetParam(), world, *alone);
  for (int ep_size = 2; ep_size <= world.size(); ep_size *= 2) {
    auto ep = world.split(world.rank() / ep_size, world.rank() % ep_size, "ep");
    // Expert gradients: sum the ep = 1 gradients over this ep group's ranks; each rank holds its
    // own experts' rows of that sum (others are zero in got).
    auto sum_over_group = [&](std::vector<double> values) {
      OwnedTensor t({std::int64_t(values.size())}, DType::f64, Device::cpu);
      from_vector(t, values);
      ep->all_reduce(t, ReduceOp::sum);
      return to_vector(t);
    };
    const std::vector<double> want_in = sum_over_group(reference.dw_in), want_out = sum_over_group(reference.dw_out);
    for (int chunks : {1, 3}) {
      SCOPED_TRACE(::testing::Message() << "ep=" << ep_size << " chunks=" << chunks);
      const Result got = run(GetParam(), world, *ep, {.chunks = chunks});
      EXPECT_LT(relative_error(got.out, reference.out), 1e-12);
      EXPECT_LT(relative_error(got.dx, reference.dx), 1e-12);
      EXPECT_LT(relative_error(got.dw_router, reference.dw_router), 1e-12);
      EXPECT_LT(relative_error(got.dw_noise, reference.dw_noise), 1e-12);
      // f32 gradients: the two layouts round their sums at different points.
      EXPECT_LT(relative_error(sum_over_group(got.dw_in), want_in), 1e-6);
      EXPECT_LT(relative_error(sum_over_group(got.dw_out), want_out), 1e-6);
    }
  }
}

// Overwriting equals accumulating onto zeros, bit for bit, also for experts (and, at ep = world
// size, whole ranks) that receive no tokens: their gradients are exactly zero. A second backward
// in accumulate mode doubles every gradient.
TEST_P(MoeLayerLayouts, OverwriteEqualsAccumulateOntoZerosWithStarvedExperts) {
  Communicator& world = sy::test::world(Device::cpu);
  const int experts = 8;
  for (int ep_size = 1; ep_size <= world.size(); ep_size *= 2) {
    auto ep = world.split(world.rank() / ep_size, world.rank() % ep_size, "ep");
    const std::int64_t local = experts / ep_size, first = ep->rank() * local;
    for (int chunks : {1, 3}) {
      SCOPED_TRACE(::testing::Message() << "ep=" << ep_size << " chunks=" << chunks);
      const Result overwritten = run(GetParam(), world, *ep, {.chunks = chunks, .starve_upper_experts = true});
      const Result accumulated = run(GetParam(), world, *ep,
                                     {.chunks = chunks, .mode = GradMode::accumulate, .starve_upper_experts = true});
      EXPECT_EQ(overwritten.dw_router, accumulated.dw_router);
      EXPECT_EQ(overwritten.dw_noise, accumulated.dw_noise);
      EXPECT_EQ(overwritten.dw_in, accumulated.dw_in);
      EXPECT_EQ(overwritten.dw_out, accumulated.dw_out);
      // The starved experts' gradients are zero, and this rank's others are not.
      const std::size_t in_size = overwritten.dw_in.size() / experts;
      for (std::int64_t e = first; e < first + local; ++e) {
        const auto begin = overwritten.dw_in.begin() + std::ptrdiff_t(std::size_t(e) * in_size);
        const bool all_zero = std::all_of(begin, begin + std::ptrdiff_t(in_size), [](double v) { return v == 0.0; });
        EXPECT_EQ(all_zero, e >= experts / 2) << "expert " << e;
      }
      const Result doubled = run(GetParam(), world, *ep, {.chunks = chunks, .twice = true, .starve_upper_experts = true});
      for (auto [got, once] : {std::pair{&doubled.dw_in, &overwritten.dw_in}, std::pair{&doubled.dw_router, &overwritten.dw_router}}) {
        std::vector<double> half = *got;
        for (double& v : half) v /= 2;
        EXPECT_LT(relative_error(half, *once), 1e-6);  // f32 expert gradients
      }
    }
  }
}

// d(sum(out * dout) + aux + z)/dx and /dw_router against central differences, with the experts
// spread over every rank (a perturbation on one rank moves tokens through the others' experts).
TEST(MoeLayerGradients, InputAndRouterGradientsMatchFiniteDifferences) {
  Communicator& world = sy::test::world(Device::cpu);
  const int experts = 2 * world.size();
  MoeLayerConfig config;
  config.router.experts = experts;
  config.router.top_k = 2;
  config.router.noise = RouterNoise::gaussian;
  config.router.drop_policy = DropPolicy::position;
  config.router.capacity_factor = 1.0;
  config.router.aux_loss_coef = 0.1f;
  config.router.z_loss_coef = 0.01f;
  config.d_model = 4;
  config.d_ff = 3;
  config.activation = ExpertActivation::gelu;
  MoeLayer layer(config, MoeGroups{&world, nullptr, nullptr});
  const std::int64_t local = layer.local_experts(), first = world.rank() * local, tokens = 5;
  OwnedTensor w_router = global_weight({4, experts}, 1, 0.5), w_noise = global_weight({4, experts}, 2, 0.5);
  OwnedTensor w_in = global_weight({experts, 4, 3}, 3, 0.4), w_out = global_weight({experts, 3, 4}, 4, 0.4);
  MoeWeights weights{w_router, w_noise, {w_in.view().slice_rows(first, local), w_out.view().slice_rows(first, local)}};
  OwnedTensor x = random_tensor({tokens, 4}, DType::f64, Device::cpu, 300 + std::uint64_t(world.rank()));
  OwnedTensor dout = random_tensor({tokens, 4}, DType::f64, Device::cpu, 400 + std::uint64_t(world.rank()));
  OwnedTensor out({tokens, 4}, DType::f64, Device::cpu);
  Arena arena(Device::cpu, std::size_t(1) << 20);
  // The loss summed over ranks; every rank evaluates it collectively, perturbing only rank 0.
  auto loss = [&] {
    arena.reset();
    layer.forward(x, weights, true, RngKey{5, 0, 1}, world.rank() * tokens, arena, out);
    const RouterStats stats = layer.stats();
    OwnedTensor total({1}, DType::f64, Device::cpu);
    from_vector(total, {weighted_sum(out, dout) + stats.aux_loss + stats.z_loss});
    world.all_reduce(total, ReduceOp::sum);
    return to_vector(total)[0];
  };
  loss();
  OwnedTensor dx({tokens, 4}, DType::f64, Device::cpu);
  OwnedTensor dw_router = zeros({4, experts}, DType::f64, Device::cpu), dw_noise = zeros({4, experts}, DType::f64, Device::cpu);
  OwnedTensor dw_in = zeros({local, 4, 3}, DType::f32, Device::cpu), dw_out = zeros({local, 3, 4}, DType::f32, Device::cpu);
  layer.backward(dout, weights, arena, dx, MoeGrads{dw_router, dw_noise, {dw_in, dw_out}}, GradMode::accumulate);
  // Rank 0's x: the others evaluate the same loss calls in lockstep with nothing perturbed.
  OwnedTensor probe = zeros({tokens, 4}, DType::f64, Device::cpu);
  const Tensor& target = world.rank() == 0 ? x.view() : probe.view();
  const std::vector<double> numeric = numeric_gradient(target, loss);
  if (world.rank() == 0) {
    EXPECT_LT(relative_error(to_vector(dx), numeric), 1e-6);
  }
  // The router weight is replicated: the total gradient is the sum over ranks.
  world.all_reduce(dw_router, ReduceOp::sum);
  const std::vector<double> numeric_router = numeric_gradient(w_router, loss);
  EXPECT_LT(relative_error(to_vector(dw_router), numeric_router), 1e-6);
}

std::string params_name(const ::testing::TestParamInfo<Params>& info) {
  const char* act[] = {"gelu", "relu", "swiglu"};
  return std::string(info.param.dropless ? "dropless" : "capacity") + "_" + router_noise_name(info.param.noise) + "_" +
         act[int(info.param.activation)];
}

INSTANTIATE_TEST_SUITE_P(Modes, MoeLayerLayouts,
                         ::testing::Values(Params{false, RouterNoise::jitter, ExpertActivation::gelu},
                                           Params{true, RouterNoise::gaussian, ExpertActivation::swiglu},
                                           Params{false, RouterNoise::gaussian, ExpertActivation::relu},
                                           Params{true, RouterNoise::none, ExpertActivation::gelu}),
                         params_name);

}  // namespace
}  // namespace sy::test
