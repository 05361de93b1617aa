// Router CPU reference: hand-computed routings (ties, one hot expert, exact capacity, k = 2,
// both drop policies, dropless), loss values, settings errors, layout-independent noise and
// fp64 finite-difference gradients through gates, aux, z and Gaussian noise, and backward adding
// to dx and the weight gradients.
#include <algorithm>
#include <cmath>

#include "moe/router.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

// Routes rows of given logits: x = logits, Wr = identity, so logits reach softmax unchanged.
class RouterCase {
 public:
  RouterState& route(RouterSettings s, const std::vector<std::vector<double>>& logits, bool training = true) {
    const std::int64_t n = std::int64_t(logits.size()), e = std::int64_t(logits[0].size());
    s.experts = int(e);
    s.noise = RouterNoise::none;
    x_ = OwnedTensor({n, e}, DType::f64, Device::cpu);
    w_ = OwnedTensor({e, e}, DType::f64, Device::cpu);
    std::vector<double> xv, wv(std::size_t(e * e), 0.0);
    for (const auto& row : logits) xv.insert(xv.end(), row.begin(), row.end());
    for (std::int64_t i = 0; i < e; ++i) wv[std::size_t(i * e + i)] = 1.0;
    from_vector(x_, xv);
    from_vector(w_, wv);
    arena_.reset();
    router_forward(s, x_, w_, Tensor{}, training, RngKey{1, 0, 0}, 0, arena_, state_);
    return state_;
  }

 private:
  Arena arena_{Device::cpu, 1 << 20};
  OwnedTensor x_, w_;
  RouterState state_;
};

std::vector<int> ints(const Tensor& t) {
  std::vector<int> out;
  for (double v : to_vector(t)) out.push_back(int(v));
  return out;
}

RouterSettings settings_with(int k, double capacity_factor, DropPolicy policy) {
  RouterSettings s;
  s.top_k = k;
  s.capacity_factor = capacity_factor;
  s.drop_policy = policy;
  return s;
}

TEST(RouterTest, DefaultsAreSwitchRouting) {
  const RouterSettings s;
  EXPECT_EQ(s.top_k, 1);
  EXPECT_EQ(s.capacity_factor, 1.25);
  EXPECT_EQ(s.eval_capacity_factor, 2.0);
  EXPECT_EQ(s.noise, RouterNoise::jitter);
  EXPECT_FLOAT_EQ(s.jitter_eps, 1e-2f);
  EXPECT_FLOAT_EQ(s.aux_loss_coef, 1e-2f);
  EXPECT_FLOAT_EQ(s.z_loss_coef, 1e-3f);
  EXPECT_EQ(s.drop_policy, DropPolicy::position);
  EXPECT_EQ(s.loss_scope, RouterLossScope::local);
}

TEST(RouterTest, CapacityIsCeilOfFactorTimesTokensTimesKOverExperts) {
  RouterSettings s;
  s.experts = 4;
  EXPECT_EQ(router_capacity(s, 10, true), 4);   // ceil(1.25 * 10 / 4) = ceil(3.125)
  EXPECT_EQ(router_capacity(s, 10, false), 5);  // eval factor 2.0
  s.top_k = 2;
  EXPECT_EQ(router_capacity(s, 8, true), 5);  // 1.25 * 8 * 2 / 4 = 5 exactly
  s.experts = 10;
  s.top_k = 1;
  s.capacity_factor = 1.1;
  EXPECT_EQ(router_capacity(s, 100, true), 11);  // 11.000000000000002 in double
  s.drop_policy = DropPolicy::dropless;
  EXPECT_EQ(router_capacity(s, 100, true), 0);
}

TEST(RouterTest, TopKTiesGoToTheLowerExpert) {
  RouterCase c;
  const RouterState& st = c.route(settings_with(2, 4.0, DropPolicy::position), {{1, 3, 3, 3}, {0, 0, 0, 0}, {2, 1, 2, 0}});
  EXPECT_EQ(ints(st.routing.expert), (std::vector<int>{1, 2, 0, 1, 0, 2}));
  const std::vector<double> gate = to_vector(st.routing.gate), probs = to_vector(st.probs);
  EXPECT_DOUBLE_EQ(gate[0], probs[1]);
  EXPECT_DOUBLE_EQ(gate[2], 0.25);
}

TEST(RouterTest, EveryTokenToOneExpertKeepsTheFirstCapacityTokens) {
  RouterCase c;
  std::vector<std::vector<double>> logits(8, std::vector<double>{0, 0, 2, 0});
  const RouterState& st = c.route(settings_with(1, 1.0, DropPolicy::position), logits);
  EXPECT_EQ(st.routing.capacity, 2);  // ceil(1.0 * 8 / 4)
  EXPECT_EQ(ints(st.routing.expert), std::vector<int>(8, 2));
  EXPECT_EQ(ints(st.routing.slot), (std::vector<int>{0, 1, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(ints(st.routing.expert_counts), (std::vector<int>{0, 0, 2, 0}));
  const std::vector<double> gate = to_vector(st.routing.gate);
  EXPECT_GT(gate[1], 0.5);
  for (int n = 2; n < 8; ++n) EXPECT_EQ(gate[std::size_t(n)], 0.0) << "dropped token " << n;
  EXPECT_EQ(ints(st.tokens_per_expert), (std::vector<int>{0, 0, 8, 0}));
  EXPECT_DOUBLE_EQ(to_vector(st.dropped_fraction)[0], 0.75);
}

TEST(RouterTest, CapacityHitExactlyDropsNothing) {
  RouterCase c;
  std::vector<std::vector<double>> logits;
  for (int n = 0; n < 8; ++n) {
    std::vector<double> row(4, 0.0);
    row[std::size_t(n % 4)] = 1.0;
    logits.push_back(row);
  }
  const RouterState& st = c.route(settings_with(1, 1.0, DropPolicy::position), logits);
  EXPECT_EQ(st.routing.capacity, 2);
  EXPECT_EQ(ints(st.routing.slot), (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(ints(st.routing.expert_counts), (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(to_vector(st.dropped_fraction)[0], 0.0);
}

TEST(RouterTest, PositionPolicyQueuesAllFirstChoicesBeforeSecondChoices) {
  RouterCase c;
  // First choices: 0 -> e0, 1 -> e1, 2 -> e2; second choices: 0 -> e1, 1 -> e0, 2 -> e1.
  // C = ceil(0.5 * 3 * 2 / 3) = 1: every first choice fits, so every second choice is dropped,
  // even token 0's, which precedes token 1's first choice in token order.
  const RouterState& st = c.route(settings_with(2, 0.5, DropPolicy::position), {{3, 2, 0}, {2, 3, 0}, {0, 2, 3}});
  EXPECT_EQ(st.routing.capacity, 1);
  EXPECT_EQ(ints(st.routing.expert), (std::vector<int>{0, 1, 1, 0, 2, 1}));
  EXPECT_EQ(ints(st.routing.slot), (std::vector<int>{0, -1, 0, -1, 0, -1}));
  EXPECT_EQ(ints(st.routing.expert_counts), (std::vector<int>{1, 1, 1}));
  EXPECT_DOUBLE_EQ(to_vector(st.dropped_fraction)[0], 0.5);
}

TEST(RouterTest, RenormalisedTopTwoGatesSumToOne) {
  RouterCase c;
  RouterSettings s = settings_with(2, 1.0, DropPolicy::dropless);
  s.renormalize = true;
  const RouterState& st = c.route(s, {{std::log(3.0), 0, std::log(2.0), -1}});
  EXPECT_EQ(ints(st.routing.expert), (std::vector<int>{0, 2}));
  const std::vector<double> gate = to_vector(st.routing.gate);
  EXPECT_NEAR(gate[0], 0.6, 1e-15);  // 3 / (3 + 2)
  EXPECT_NEAR(gate[1], 0.4, 1e-15);
}

TEST(RouterTest, ProbabilityPolicyKeepsTheHighestGates) {
  RouterCase c;
  // All tokens choose expert 0; gates order tokens 1 = 3 > 2 > 0, the tie going to token 1.
  const std::vector<std::vector<double>> logits{{1, 0}, {3, 0}, {2, 0}, {3, 0}};
  const RouterState& by_gate = c.route(settings_with(1, 1.0, DropPolicy::probability), logits);
  EXPECT_EQ(by_gate.routing.capacity, 2);
  EXPECT_EQ(ints(by_gate.routing.slot), (std::vector<int>{-1, 0, -1, 1}));
  RouterCase p;
  const RouterState& by_position = p.route(settings_with(1, 1.0, DropPolicy::position), logits);
  EXPECT_EQ(ints(by_position.routing.slot), (std::vector<int>{0, 1, -1, -1}));
}

TEST(RouterTest, DroplessKeepsEveryChoice) {
  RouterCase c;
  std::vector<std::vector<double>> logits(5, std::vector<double>{0, 1, 0});
  const RouterState& st = c.route(settings_with(1, 1.0, DropPolicy::dropless), logits);
  EXPECT_EQ(st.routing.capacity, 0);
  EXPECT_EQ(ints(st.routing.slot), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(ints(st.routing.expert_counts), (std::vector<int>{0, 5, 0}));
  EXPECT_EQ(to_vector(st.dropped_fraction)[0], 0.0);
}

TEST(RouterTest, AuxAndZLossesMatchHandComputedValues) {
  RouterCase c;
  RouterSettings s = settings_with(1, 2.0, DropPolicy::position);
  s.aux_loss_coef = 0.5f;
  s.z_loss_coef = 0.25f;
  // Token 0: probs (1/2, 1/2), tie -> expert 0, lse = ln 2. Token 1: probs (3/4, 1/4), lse = ln 4.
  // f = (1, 0), P = (5/8, 3/8): aux = 0.5 * 2 * 5/8. z = 0.25 * (ln2^2 + ln4^2) / 2.
  const RouterState& st = c.route(s, {{0, 0}, {std::log(3.0), 0}});
  const double ln2 = std::log(2.0);
  EXPECT_NEAR(to_vector(st.aux_loss)[0], 0.625, 1e-15);
  EXPECT_NEAR(to_vector(st.z_loss)[0], 0.25 * 5 * ln2 * ln2 / 2, 1e-15);
  EXPECT_EQ(ints(st.tokens_per_expert), (std::vector<int>{2, 0}));
  const RouterStats stats = fetch_router_stats(st);
  EXPECT_NEAR(stats.aux_loss, 0.625, 1e-15);
  EXPECT_EQ(stats.tokens_per_expert, (std::vector<std::int64_t>{2, 0}));
}

TEST(RouterTest, RejectsBadSettingsNamingTheSetting) {
  auto with = [](auto change) {
    RouterSettings s;
    s.experts = 2;
    change(s);
    return s;
  };
  expect_error([&] { validate(with([](RouterSettings& s) { s.top_k = 3; })); }, ErrorKind::config,
               "moe.top_k=3 exceeds moe.experts=2");
  expect_error([&] { validate(with([](RouterSettings& s) { s.top_k = 0; })); }, "moe.top_k=0 must be at least 1");
  expect_error([&] { validate(with([](RouterSettings& s) { s.experts = 0; })); }, "moe.experts=0 must be in [1, 4096]");
  expect_error([&] { validate(with([](RouterSettings& s) { s.capacity_factor = 0; })); },
               "moe.capacity_factor=0 must be positive");
  expect_error([&] { validate(with([](RouterSettings& s) { s.eval_capacity_factor = -1; })); },
               "moe.eval_capacity_factor=-1 must be positive");
  expect_error([&] { validate(with([](RouterSettings& s) { s.jitter_eps = 1.5f; })); },
               "moe.router_jitter_eps=1.5 must be in [0, 1)");
  expect_error([&] { validate(with([](RouterSettings& s) { s.aux_loss_coef = -1; })); },
               "moe.aux_loss_coef=-1 must not be negative");
}

TEST(RouterTest, RejectsGaussianNoiseWithoutProjectionAndGlobalScopeWithoutGroup) {
  Arena arena(Device::cpu, 1 << 16);
  RouterState st;
  OwnedTensor x = random_tensor({3, 4}, DType::f32, Device::cpu, 1), w = random_tensor({4, 2}, DType::f32, Device::cpu, 2);
  RouterSettings s;
  s.experts = 2;
  s.noise = RouterNoise::gaussian;
  expect_error([&] { router_forward(s, x, w, Tensor{}, true, RngKey{}, 0, arena, st); },
               "router_forward: moe.router_noise=gaussian needs the noise projection w_noise");
  s.noise = RouterNoise::none;
  s.loss_scope = RouterLossScope::global;
  expect_error([&] { router_forward(s, x, w, Tensor{}, true, RngKey{}, 0, arena, st); },
               "router_forward: moe.router_loss_scope=global needs the dp communicator");
}

// Forward of rows [begin, begin + count) of x as their own batch, with first_token = begin.
RouterState route_rows(const RouterSettings& s, const Tensor& x, const Tensor& w, const Tensor& wn, std::int64_t begin,
                       std::int64_t count, Arena& arena) {
  RouterState st;
  router_forward(s, x.slice_rows(begin, count), w, wn, true, RngKey{7, 0, 3}, begin, arena, st);
  return st;
}

TEST(RouterTest, NoiseDependsOnTheGlobalTokenIndexNotTheLayout) {
  for (RouterNoise noise : {RouterNoise::jitter, RouterNoise::gaussian}) {
    RouterSettings s;
    s.experts = 5;
    s.noise = noise;
    s.jitter_eps = 0.1f;
    OwnedTensor x = random_tensor({6, 4}, DType::f64, Device::cpu, 11);
    OwnedTensor w = random_tensor({4, 5}, DType::f64, Device::cpu, 12), wn = random_tensor({4, 5}, DType::f64, Device::cpu, 13);
    Arena arena(Device::cpu, 1 << 20);
    const std::vector<double> whole = to_vector(route_rows(s, x, w, wn, 0, 6, arena).logits);
    std::vector<double> halves = to_vector(route_rows(s, x, w, wn, 0, 3, arena).logits);
    const std::vector<double> second = to_vector(route_rows(s, x, w, wn, 3, 3, arena).logits);
    halves.insert(halves.end(), second.begin(), second.end());
    EXPECT_EQ(whole, halves) << router_noise_name(noise);

    RouterState eval;
    router_forward(s, x, w, wn, false, RngKey{7, 0, 3}, 0, arena, eval);
    OwnedTensor clean({6, 5}, DType::f64, Device::cpu);
    gemm(x, w, clean, false, false);
    EXPECT_LT(relative_error(eval.logits, clean), 1e-15) << "no noise outside training";
    EXPECT_GT(relative_error(whole, to_vector(clean)), 1e-3) << "noise in training";
  }
}

struct GradientCase {
  RouterNoise noise;
  int top_k;
  bool renormalize;
  DropPolicy policy;
};

class RouterGradient : public ::testing::TestWithParam<GradientCase> {};

TEST_P(RouterGradient, MatchesFiniteDifferences) {
  const GradientCase gc = GetParam();
  RouterSettings s;
  s.experts = 5;
  s.top_k = gc.top_k;
  s.renormalize = gc.renormalize;
  s.noise = gc.noise;
  s.jitter_eps = 0.2f;
  s.drop_policy = gc.policy;
  s.capacity_factor = 0.7;  // some choices are dropped
  s.aux_loss_coef = 0.5f;   // large coefficients so both losses weigh in the check
  s.z_loss_coef = 0.3f;
  const std::int64_t N = 9, d = 6;
  OwnedTensor x = random_tensor({N, d}, DType::f64, Device::cpu, 21);
  OwnedTensor w = random_tensor({d, 5}, DType::f64, Device::cpu, 22, 0.7f);
  OwnedTensor wn = random_tensor({d, 5}, DType::f64, Device::cpu, 23, 0.5f);
  OwnedTensor dgate = random_tensor({N, gc.top_k}, DType::f64, Device::cpu, 24);
  Arena arena(Device::cpu, 1 << 20);
  RouterState st;
  auto loss = [&] {
    arena.reset();
    router_forward(s, x, w, wn, true, RngKey{5, 0, 1}, 100, arena, st);
    return weighted_sum(st.routing.gate, dgate) + to_vector(st.aux_loss)[0] + to_vector(st.z_loss)[0];
  };
  loss();
  const std::vector<int> slots = ints(st.routing.slot);
  if (gc.policy != DropPolicy::dropless) {
    EXPECT_NE(std::count(slots.begin(), slots.end(), -1), 0) << "no drops";
  }
  OwnedTensor dx = zeros({N, d}, DType::f64, Device::cpu);
  OwnedTensor dw({d, 5}, DType::f64, Device::cpu), dwn({d, 5}, DType::f64, Device::cpu);
  poison(dw);  // overwritten, never read
  poison(dwn);
  router_backward(st, w, wn, dgate, dx, dw, dwn, GradMode::overwrite, arena);
  EXPECT_LT(relative_error(to_vector(dx), numeric_gradient(x, loss)), 1e-6);
  EXPECT_LT(relative_error(to_vector(dw), numeric_gradient(w, loss)), 1e-6);
  if (gc.noise == RouterNoise::gaussian) {
    EXPECT_LT(relative_error(to_vector(dwn), numeric_gradient(wn, loss)), 1e-6);
  } else {  // no noise projection in this forward: its overwritten gradient is zero
    EXPECT_EQ(to_vector(dwn), std::vector<double>(std::size_t(d * 5), 0.0));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RouterGradient,
    ::testing::Values(GradientCase{RouterNoise::none, 1, false, DropPolicy::position},
                      GradientCase{RouterNoise::jitter, 1, false, DropPolicy::probability},
                      GradientCase{RouterNoise::gaussian, 1, false, DropPolicy::position},
                      GradientCase{RouterNoise::none, 2, false, DropPolicy::position},
                      GradientCase{RouterNoise::none, 2, true, DropPolicy::probability},
                      GradientCase{RouterNoise::gaussian, 2, true, DropPolicy::dropless},
                      GradientCase{RouterNoise::jitter, 2, true, DropPolicy::position}),
    [](const ::testing::TestParamInfo<GradientCase>& param_info) {
      const GradientCase& c = param_info.param;
      return std::string(router_noise_name(c.noise)) + "_k" + std::to_string(c.top_k) +
             (c.renormalize ? "_renorm_" : "_") + drop_policy_name(c.policy);
    });

// Backward adds to dx (the MoE layer sums it with the dispatch path's gradient) in both modes,
// and to the weight gradients when accumulating: from nonzero starting values the result is
// start + the plain gradient. Overwriting stores the plain gradient over anything.
TEST(RouterTest, BackwardAddsToDxAndWeightGradients) {
  for (RouterNoise noise : {RouterNoise::jitter, RouterNoise::gaussian}) {
    SCOPED_TRACE(router_noise_name(noise));
    RouterSettings s;
    s.experts = 4;
    s.noise = noise;
    s.jitter_eps = 0.1f;
    OwnedTensor x = random_tensor({5, 3}, DType::f32, Device::cpu, 31);
    OwnedTensor w = random_tensor({3, 4}, DType::f32, Device::cpu, 32);
    OwnedTensor wn = random_tensor({3, 4}, DType::f32, Device::cpu, 33);
    OwnedTensor dgate = random_tensor({5, 1}, DType::f32, Device::cpu, 34);
    Arena arena(Device::cpu, 1 << 20);
    RouterState st;
    router_forward(s, x, w, wn, true, RngKey{}, 0, arena, st);
    OwnedTensor dx = zeros({5, 3}, DType::f32, Device::cpu);
    OwnedTensor dw({3, 4}, DType::f32, Device::cpu), dwn({3, 4}, DType::f32, Device::cpu);
    poison(dw);
    poison(dwn);
    router_backward(st, w, wn, dgate, dx, dw, dwn, GradMode::overwrite, arena);
    const std::vector<double> grad_x = to_vector(dx), grad_w = to_vector(dw), grad_wn = to_vector(dwn);
    EXPECT_NE(grad_x, std::vector<double>(grad_x.size(), 0.0)) << "no gradient to add";
    if (noise != RouterNoise::gaussian) {
      EXPECT_EQ(grad_wn, std::vector<double>(grad_wn.size(), 0.0));
    }

    OwnedTensor dx0 = random_tensor({5, 3}, DType::f32, Device::cpu, 35);
    OwnedTensor dw0 = random_tensor({3, 4}, DType::f32, Device::cpu, 36);
    OwnedTensor dwn0 = random_tensor({3, 4}, DType::f32, Device::cpu, 37);
    const std::vector<double> start_x = to_vector(dx0), start_w = to_vector(dw0), start_wn = to_vector(dwn0);
    router_backward(st, w, wn, dgate, dx0, dw0, dwn0, GradMode::accumulate, arena);
    const std::vector<double> sum_x = to_vector(dx0), sum_w = to_vector(dw0), sum_wn = to_vector(dwn0);
    // f32 storage: one rounding of the sum.
    auto tol = [](double a, double b) { return 1e-6 * (std::abs(a) + std::abs(b)) + 1e-9; };
    for (std::size_t i = 0; i < sum_x.size(); ++i) {
      EXPECT_NEAR(sum_x[i], start_x[i] + grad_x[i], tol(start_x[i], grad_x[i]));
    }
    for (std::size_t i = 0; i < sum_w.size(); ++i) {
      EXPECT_NEAR(sum_w[i], start_w[i] + grad_w[i], tol(start_w[i], grad_w[i]));
    }
    for (std::size_t i = 0; i < sum_wn.size(); ++i) {
      const double expected = noise == RouterNoise::gaussian ? start_wn[i] + grad_wn[i] : start_wn[i];
      EXPECT_NEAR(sum_wn[i], expected, tol(start_wn[i], grad_wn[i])) << "dw_noise is touched only for gaussian noise";
    }
    // A new step overwrites: the weight gradients are the plain ones again, bit for bit.
    router_backward(st, w, wn, dgate, dx0, dw0, dwn0, GradMode::overwrite, arena);
    EXPECT_EQ(to_vector(dw0), grad_w);
    EXPECT_EQ(to_vector(dwn0), grad_wn);
  }
}

// A rank without tokens: nothing to add, and overwriting writes zeros.
TEST(RouterTest, WithoutTokensOverwriteWritesZeros) {
  RouterSettings s;
  s.experts = 4;
  s.noise = RouterNoise::gaussian;
  OwnedTensor x({0, 3}, DType::f32, Device::cpu), dx({0, 3}, DType::f32, Device::cpu);
  OwnedTensor w = random_tensor({3, 4}, DType::f32, Device::cpu, 38);
  OwnedTensor wn = random_tensor({3, 4}, DType::f32, Device::cpu, 39);
  OwnedTensor dgate({0, 1}, DType::f32, Device::cpu), dw({3, 4}, DType::f32, Device::cpu);
  OwnedTensor dwn({3, 4}, DType::f32, Device::cpu);
  Arena arena(Device::cpu, 1 << 20);
  RouterState st;
  router_forward(s, x, w, wn, true, RngKey{}, 0, arena, st);
  poison(dw);
  poison(dwn);
  router_backward(st, w, wn, dgate, dx, dw, dwn, GradMode::overwrite, arena);
  EXPECT_EQ(to_vector(dw), std::vector<double>(12, 0.0));
  EXPECT_EQ(to_vector(dwn), std::vector<double>(12, 0.0));
}

}  // namespace
}  // namespace sy::test
