// Expert FFNs on CPU: forward against a per-expert loop of plain matrix math, backward against
// finite differences in fp64, and tensor-parallel shards against the unsplit module; both
// layouts (capacity and dropless) and all three activations.
#include <cmath>
#include <vector>

#include "moe/experts.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr std::int64_t kExperts = 3, kModel = 5, kHidden = 4;
// Dropless rows per expert: uneven, with an empty expert in the middle.
const std::vector<std::int64_t> kExpertRows{2, 0, 3};
constexpr std::int64_t kCapacity = 3;

struct Case {
  ExpertActivation activation;
  bool dropless;
};

const char* activation_name(ExpertActivation a) {
  return a == ExpertActivation::gelu ? "gelu" : a == ExpertActivation::relu ? "relu" : "swiglu";
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << activation_name(c.activation) << (c.dropless ? " dropless" : " capacity");
}

std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  const Case& c = param_info.param;
  return std::string(activation_name(c.activation)) + (c.dropless ? "_dropless" : "_capacity");
}

ExpertFFNConfig config_for(ExpertActivation activation, std::int64_t d_ff = kHidden) {
  return ExpertFFNConfig{kExperts, kModel, d_ff, activation};
}

Shape x_shape_for(bool dropless) { return dropless ? Shape{5, kModel} : Shape{kExperts, kCapacity, kModel}; }
std::span<const std::int64_t> rows_for(bool dropless) {
  return dropless ? std::span<const std::int64_t>(kExpertRows) : std::span<const std::int64_t>();
}
// Rows [first, first + count) of x that expert e owns.
std::pair<std::int64_t, std::int64_t> expert_range(bool dropless, std::int64_t e) {
  if (!dropless) return {e * kCapacity, kCapacity};
  std::int64_t first = 0;
  for (std::int64_t i = 0; i < e; ++i) first += kExpertRows[std::size_t(i)];
  return {first, kExpertRows[std::size_t(e)]};
}

double gelu(double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }

// y = act(x @ w_in[e]) @ w_out[e] row by row, in double.
std::vector<double> naive_forward(const Case& c, const std::vector<double>& x, const std::vector<double>& w_in,
                                  const std::vector<double>& w_out, std::int64_t f) {
  const std::int64_t f_in = c.activation == ExpertActivation::swiglu ? 2 * f : f;
  std::vector<double> y(x.size());
  for (std::int64_t e = 0; e < kExperts; ++e) {
    const auto [first, count] = expert_range(c.dropless, e);
    for (std::int64_t r = first; r < first + count; ++r) {
      std::vector<double> h(static_cast<std::size_t>(f_in), 0.0), act(static_cast<std::size_t>(f));
      for (std::int64_t j = 0; j < f_in; ++j)
        for (std::int64_t i = 0; i < kModel; ++i)
          h[std::size_t(j)] += x[std::size_t(r * kModel + i)] * w_in[std::size_t((e * kModel + i) * f_in + j)];
      for (std::int64_t j = 0; j < f; ++j) {
        const double v = h[std::size_t(j)];
        switch (c.activation) {
          case ExpertActivation::gelu: act[std::size_t(j)] = gelu(v); break;
          case ExpertActivation::relu: act[std::size_t(j)] = v > 0 ? v : 0; break;
          case ExpertActivation::swiglu: act[std::size_t(j)] = v / (1 + std::exp(-v)) * h[std::size_t(f + j)]; break;
        }
      }
      for (std::int64_t i = 0; i < kModel; ++i) {
        double sum = 0;
        for (std::int64_t j = 0; j < f; ++j) sum += act[std::size_t(j)] * w_out[std::size_t((e * f + j) * kModel + i)];
        y[std::size_t(r * kModel + i)] = sum;
      }
    }
  }
  return y;
}

// Inputs of one forward/backward pair in f64 on the CPU, its buffers from an arena.
struct Problem {
  Problem(const Case& c, std::int64_t d_ff, std::uint64_t seed)
      : module(config_for(c.activation, d_ff)),
        arena(Device::cpu, 1 << 16),
        x(random_tensor(x_shape_for(c.dropless), DType::f64, Device::cpu, seed)),
        w_in(random_tensor({kExperts, kModel, module.config().d_in()}, DType::f64, Device::cpu, seed + 1)),
        w_out(random_tensor({kExperts, d_ff, kModel}, DType::f64, Device::cpu, seed + 2)),
        dy(random_tensor(x_shape_for(c.dropless), DType::f64, Device::cpu, seed + 3)),
        y(x_shape_for(c.dropless), DType::f64, Device::cpu),
        dx(x_shape_for(c.dropless), DType::f64, Device::cpu),
        dw_in(zeros({kExperts, kModel, module.config().d_in()}, DType::f32, Device::cpu)),
        dw_out(zeros({kExperts, d_ff, kModel}, DType::f32, Device::cpu)),
        saved(module.alloc_activations(arena, x_shape_for(c.dropless), DType::f64)),
        scratch(module.alloc_scratch(arena, x_shape_for(c.dropless), DType::f64)),
        rows(rows_for(c.dropless)) {}

  void forward() { module.forward(x, rows, {w_in, w_out}, saved, y); }
  void backward(GradMode mode = GradMode::overwrite) {
    module.backward(x, rows, {w_in, w_out}, saved, dy, dx, {dw_in, dw_out}, scratch, mode);
  }

  ExpertFFN module;
  Arena arena;
  OwnedTensor x, w_in, w_out, dy, y, dx, dw_in, dw_out;
  ExpertActivations saved;
  ExpertScratch scratch;
  std::span<const std::int64_t> rows;
};

class ExpertFFNCpu : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertFFNCpu, ForwardEqualsPerExpertLoop) {
  const Case c = GetParam();
  Problem p(c, kHidden, 10);
  if (!c.dropless) {  // a zero padding row of expert 1 must give a zero output row
    std::vector<double> xv = to_vector(p.x);
    for (std::int64_t i = 0; i < kModel; ++i) xv[std::size_t((1 * kCapacity + 2) * kModel + i)] = 0;
    from_vector(p.x, xv);
  }
  poison(p.y);
  poison(p.saved.h);
  poison(p.saved.act);
  p.forward();
  const std::vector<double> y = to_vector(p.y);
  EXPECT_LT(relative_error(y, naive_forward(c, to_vector(p.x), to_vector(p.w_in), to_vector(p.w_out), kHidden)), 1e-13);
  if (!c.dropless) {
    for (std::int64_t i = 0; i < kModel; ++i) EXPECT_EQ(y[std::size_t((1 * kCapacity + 2) * kModel + i)], 0.0);
  }
}

TEST_P(ExpertFFNCpu, BackwardMatchesFiniteDifferences) {
  const Case c = GetParam();
  Problem p(c, kHidden, 20);
  auto loss = [&] {
    p.forward();
    return weighted_sum(p.y, p.dy);
  };
  loss();
  poison(p.dx);
  if (p.scratch.dact.defined()) poison(p.scratch.dact);  // not allocated for gelu in the capacity layout
  poison(p.scratch.dh);
  poison(p.dw_in);  // overwritten: the empty dropless expert's gradients must come out zero
  poison(p.dw_out);
  p.backward(GradMode::overwrite);
  EXPECT_LT(relative_error(to_vector(p.dx), numeric_gradient(p.x, loss)), 1e-7);
  // Weight gradients are f32: 2^-24 relative rounding.
  EXPECT_LT(relative_error(to_vector(p.dw_in), numeric_gradient(p.w_in, loss)), 1e-6);
  EXPECT_LT(relative_error(to_vector(p.dw_out), numeric_gradient(p.w_out, loss)), 1e-6);
}

// Overwrite replaces whatever the gradients held (NaN here), zeros for the dropless layout's
// empty expert included; accumulate adds; overwrite again starts over.
TEST_P(ExpertFFNCpu, WeightGradientsOverwriteThenAccumulate) {
  const Case c = GetParam();
  Problem p(c, kHidden, 30);
  p.forward();
  p.backward(GradMode::accumulate);  // onto the zeros the problem starts with: the reference
  const std::vector<double> once_in = to_vector(p.dw_in), once_out = to_vector(p.dw_out);
  poison(p.dw_in);
  poison(p.dw_out);
  p.backward(GradMode::overwrite);
  EXPECT_EQ(to_vector(p.dw_in), once_in);
  EXPECT_EQ(to_vector(p.dw_out), once_out);
  p.backward(GradMode::accumulate);
  std::vector<double> twice_in = to_vector(p.dw_in), twice_out = to_vector(p.dw_out);
  for (double& v : twice_in) v /= 2;
  for (double& v : twice_out) v /= 2;
  EXPECT_LT(relative_error(twice_in, once_in), 1e-7);
  EXPECT_LT(relative_error(twice_out, once_out), 1e-7);
  p.backward(GradMode::overwrite);
  EXPECT_EQ(to_vector(p.dw_in), once_in);
  EXPECT_EQ(to_vector(p.dw_out), once_out);
  if (c.dropless) {  // expert 1 owns no rows: exactly zero
    const std::vector<double> dw_in = to_vector(p.dw_in);
    const std::int64_t per_expert = kModel * p.module.config().d_in();
    for (std::int64_t i = per_expert; i < 2 * per_expert; ++i) ASSERT_EQ(dw_in[std::size_t(i)], 0.0) << i;
  }
}

// Dropless with no rows at all (a rank that received no tokens): overwrite writes zeros.
TEST(ExpertFFN, WithoutRowsOverwriteWritesZeros) {
  const ExpertFFN module(config_for(ExpertActivation::gelu));
  Arena arena(Device::cpu, 1 << 16);
  const std::vector<std::int64_t> no_rows{0, 0, 0};
  const Shape x_shape{0, kModel};
  // Empty rows as the arena hands them out: a real address, no rows.
  const Tensor x = arena.alloc(x_shape, DType::f32), dy = arena.alloc(x_shape, DType::f32);
  const Tensor dx = arena.alloc(x_shape, DType::f32), y = arena.alloc(x_shape, DType::f32);
  OwnedTensor w_in = random_tensor({kExperts, kModel, kHidden}, DType::f32, Device::cpu, 70);
  OwnedTensor w_out = random_tensor({kExperts, kHidden, kModel}, DType::f32, Device::cpu, 71);
  OwnedTensor dw_in({kExperts, kModel, kHidden}, DType::f32, Device::cpu);
  OwnedTensor dw_out({kExperts, kHidden, kModel}, DType::f32, Device::cpu);
  poison(dw_in);
  poison(dw_out);
  const ExpertActivations saved = module.alloc_activations(arena, x_shape, DType::f32);
  const ExpertScratch scratch = module.alloc_scratch(arena, x_shape, DType::f32);
  module.forward(x, no_rows, {w_in, w_out}, saved, y);
  module.backward(x, no_rows, {w_in, w_out}, saved, dy, dx, {dw_in, dw_out}, scratch, GradMode::overwrite);
  EXPECT_EQ(to_vector(dw_in), std::vector<double>(std::size_t(kExperts * kModel * kHidden), 0.0));
  EXPECT_EQ(to_vector(dw_out), std::vector<double>(std::size_t(kExperts * kHidden * kModel), 0.0));
}

// Global w_in columns held by shard `s` of `shards`, in the shard's order: a slice of F, and
// for swiglu the matching gate columns then the matching up columns.
std::vector<std::int64_t> shard_columns(ExpertActivation activation, std::int64_t shards, std::int64_t s) {
  const std::int64_t local = kHidden / shards;
  std::vector<std::int64_t> columns;
  for (std::int64_t j = 0; j < local; ++j) columns.push_back(s * local + j);
  if (activation == ExpertActivation::swiglu) {
    for (std::int64_t j = 0; j < local; ++j) columns.push_back(kHidden + s * local + j);
  }
  return columns;
}

TEST_P(ExpertFFNCpu, TensorParallelShardsSumToTheUnsplitModule) {
  const Case c = GetParam();
  constexpr std::int64_t kShards = 2, kLocal = kHidden / kShards;
  Problem full(c, kHidden, 40);
  full.forward();
  full.backward();
  const std::int64_t f_in = full.module.config().d_in();
  const std::vector<double> w_in = to_vector(full.w_in), w_out = to_vector(full.w_out);
  const std::vector<double> dw_in = to_vector(full.dw_in), dw_out = to_vector(full.dw_out);

  std::vector<double> y_sum(to_vector(full.y).size(), 0.0), dx_sum(y_sum.size(), 0.0);
  for (std::int64_t s = 0; s < kShards; ++s) {
    SCOPED_TRACE(::testing::Message() << "shard " << s);
    Problem shard(c, kLocal, 40);  // the same x and dy (same seeds); weights replaced below
    copy(shard.x, full.x);
    copy(shard.dy, full.dy);
    const std::vector<std::int64_t> columns = shard_columns(c.activation, kShards, s);
    const auto local_in = std::int64_t(columns.size());
    std::vector<double> shard_w_in(std::size_t(kExperts * kModel * local_in));
    std::vector<double> shard_w_out(std::size_t(kExperts * kLocal * kModel));
    for (std::int64_t e = 0; e < kExperts; ++e) {
      for (std::int64_t i = 0; i < kModel; ++i)
        for (std::int64_t j = 0; j < local_in; ++j)
          shard_w_in[std::size_t((e * kModel + i) * local_in + j)] =
              w_in[std::size_t((e * kModel + i) * f_in + columns[std::size_t(j)])];
      for (std::int64_t j = 0; j < kLocal; ++j)
        for (std::int64_t i = 0; i < kModel; ++i)
          shard_w_out[std::size_t((e * kLocal + j) * kModel + i)] =
              w_out[std::size_t((e * kHidden + s * kLocal + j) * kModel + i)];
    }
    from_vector(shard.w_in, shard_w_in);
    from_vector(shard.w_out, shard_w_out);
    shard.forward();
    shard.backward();

    const std::vector<double> y = to_vector(shard.y), dx = to_vector(shard.dx);
    for (std::size_t i = 0; i < y.size(); ++i) {
      y_sum[i] += y[i];
      dx_sum[i] += dx[i];
    }
    // The shard's weight gradients are the matching slices of the unsplit ones.
    const std::vector<double> got_in = to_vector(shard.dw_in), got_out = to_vector(shard.dw_out);
    std::vector<double> want_in(got_in.size()), want_out(got_out.size());
    for (std::int64_t e = 0; e < kExperts; ++e) {
      for (std::int64_t i = 0; i < kModel; ++i)
        for (std::int64_t j = 0; j < local_in; ++j)
          want_in[std::size_t((e * kModel + i) * local_in + j)] =
              dw_in[std::size_t((e * kModel + i) * f_in + columns[std::size_t(j)])];
      for (std::int64_t j = 0; j < kLocal; ++j)
        for (std::int64_t i = 0; i < kModel; ++i)
          want_out[std::size_t((e * kLocal + j) * kModel + i)] =
              dw_out[std::size_t((e * kHidden + s * kLocal + j) * kModel + i)];
    }
    EXPECT_LT(relative_error(got_in, want_in), 1e-6);  // f32 gradients
    EXPECT_LT(relative_error(got_out, want_out), 1e-6);
  }
  // What the caller's all-reduce over tp produces.
  EXPECT_LT(relative_error(y_sum, to_vector(full.y)), 1e-13);
  EXPECT_LT(relative_error(dx_sum, to_vector(full.dx)), 1e-13);
}

INSTANTIATE_TEST_SUITE_P(Activations, ExpertFFNCpu,
                         ::testing::Values(Case{ExpertActivation::gelu, false}, Case{ExpertActivation::gelu, true},
                                           Case{ExpertActivation::relu, false}, Case{ExpertActivation::relu, true},
                                           Case{ExpertActivation::swiglu, false},
                                           Case{ExpertActivation::swiglu, true}),
                         case_name);

TEST(ExpertFFN, BufferShapesFollowTheLayoutAndActivation) {
  const ExpertFFN swiglu(config_for(ExpertActivation::swiglu));
  const ExpertBufferShapes capacity = swiglu.buffer_shapes({kExperts, 7, kModel});
  EXPECT_EQ(capacity.h, (Shape{kExperts, 7, 2 * kHidden}));
  EXPECT_EQ(capacity.act, (Shape{kExperts, 7, kHidden}));
  EXPECT_EQ(capacity.dact, (Shape{kExperts, 7, kHidden}));
  EXPECT_EQ(capacity.dh, (Shape{kExperts, 7, 2 * kHidden}));
  const ExpertFFN gelu(config_for(ExpertActivation::gelu));
  const ExpertBufferShapes dropless = gelu.buffer_shapes({11, kModel});
  EXPECT_EQ(dropless.h, (Shape{11, kHidden}));
  EXPECT_EQ(dropless.dact, (Shape{11, kHidden}));
  EXPECT_EQ(dropless.dh, (Shape{11, kHidden}));
  // GELU in the capacity layout: gemm_dgelu writes dh directly, so there is no dact buffer.
  const ExpertBufferShapes gelu_capacity = gelu.buffer_shapes({kExperts, 7, kModel});
  EXPECT_EQ(gelu_capacity.h, (Shape{kExperts, 7, kHidden}));
  EXPECT_TRUE(gelu_capacity.dact.empty());
  EXPECT_EQ(gelu_capacity.dh, (Shape{kExperts, 7, kHidden}));
}

TEST(ExpertFFN, GeluCapacityScratchHasNoDactBuffer) {
  Arena arena(Device::cpu, 1 << 16);
  const ExpertScratch scratch =
      ExpertFFN(config_for(ExpertActivation::gelu)).alloc_scratch(arena, {kExperts, kCapacity, kModel}, DType::f32);
  EXPECT_FALSE(scratch.dact.defined());
  EXPECT_EQ(scratch.dh.shape(), (Shape{kExperts, kCapacity, kHidden}));
}

TEST(ExpertFFN, RejectsRowCountsForTheWrongNumberOfExperts) {
  Problem p({ExpertActivation::relu, true}, kHidden, 50);
  const std::vector<std::int64_t> two{2, 3};
  expect_error([&] { p.module.forward(p.x, two, {p.w_in, p.w_out}, p.saved, p.y); },
               "ExpertFFN::forward: expert_rows has 2 counts for 3 local experts");
}

TEST(ExpertFFN, RejectsCapacityInputWithoutExpertAxis) {
  Problem p({ExpertActivation::relu, true}, kHidden, 60);
  expect_error([&] { p.module.forward(p.x, {}, {p.w_in, p.w_out}, p.saved, p.y); },
               "ExpertFFN::forward: capacity layout (no expert_rows) needs x [E_l = 3, C, d = 5], got f64[5, 5] cpu");
}

}  // namespace
}  // namespace sy::test
