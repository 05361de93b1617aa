// The model's gradient write modes, on CPU in f32: a step's first micro-batch overwrites every
// gradient (GradMode::overwrite), so nothing zeroes them between steps, and later micro-batches
// add. Whatever the gradients held before (another batch's gradients, or NaN), overwrite then
// gives exactly the gradients of a zeroed run in accumulate mode, the old contract; padding
// between parameters in the flat buffers stays zero. Dense and MoE models (capacity, dropless with
// experts that receive no token, Gaussian noise with its learned projection, tied embeddings,
// separate and stacked q/k/v GEMMs), each rank alone, then at tp = 2, dp = 2, dp = 2 x ep = 2 and
// dp = 2 x tp = 2 x ep = 2 where the world has the ranks.
#include <algorithm>
#include <cctype>

#include "parallel/parameter.h"
#include "parallel/process_grid.h"
#include "tests/mpi_testing.h"
#include "train/config.h"
#include "train/model.h"

namespace sy::test {
namespace {

constexpr std::int64_t kBatch = 2, kSeq = 16, kVocab = 64;

struct ModelCase {
  const char* name;
  std::vector<std::string> overrides;
};

Config config_for(const ModelCase& c, int tp, int ep) {
  std::vector<std::string> all{"run.device=cpu", "model.vocab_size=64", "model.d_model=32", "model.n_layers=2",
                               "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=48", "model.max_seq_len=16",
                               "model.tied_embeddings=false", "moe.every=0", "train.seq_len=16",
                               "train.micro_batch=2", "train.precision=fp32",
                               "parallel.tensor=" + std::to_string(tp), "parallel.expert=" + std::to_string(ep)};
  all.insert(all.end(), c.overrides.begin(), c.overrides.end());
  return parse_config("", c.name, all);
}

// 24 channels in 4 heads (2 kv heads): k and v hold 288 elements, not a multiple of the registry's
// 64-element alignment, so padding separates q, k and v and they take three GEMMs.
const ModelCase kDenseSeparateQkv{"dense, separate q/k/v", {"model.d_model=24", "model.d_ff=40", "model.activation=relu"}};
const ModelCase kDenseTied{"dense, tied", {"model.tied_embeddings=true"}};
const ModelCase kMoeCapacity{"moe capacity",
                             {"moe.every=2", "moe.experts=4", "moe.top_k=2", "moe.capacity_factor=1.0",
                              "moe.noise=jitter"}};
// 16 experts for 32 tokens at top-1: some expert gets no token (the test checks that it does).
// Three dispatch chunks, so chunks without rows for some experts are overwritten around too.
const ModelCase kMoeDroplessStarved{"moe dropless, idle experts",
                                    {"moe.every=2", "moe.experts=16", "moe.top_k=1", "moe.dropless=true",
                                     "moe.noise=none", "moe.dispatch_chunks=3", "moe.recompute_activation=true"}};
const ModelCase kMoeGaussianTied{"moe gaussian noise, tied",
                                 {"moe.every=1", "moe.experts=4", "moe.top_k=2", "moe.dropless=true",
                                  "moe.noise=gaussian", "model.tied_embeddings=true"}};

struct Batch {
  OwnedTensor tokens, targets;
  std::int64_t first_token;  // keys the router noise: the same batch must get the same noise
};

Batch batch(std::uint64_t seed, std::int64_t first_token) {
  return {random_ints({kBatch, kSeq}, kVocab, Device::cpu, seed), random_ints({kBatch, kSeq}, kVocab, Device::cpu, seed + 1),
          first_token};
}

// A model on a (tp, ep) grid over `comm`, with its registry and activation arena.
class Rig {
 public:
  Rig(const Config& config, Communicator& comm)
      : grid_(comm, config.parallel.tensor, config.parallel.expert),
        registry_(options(grid_.layout())),
        model_(config, grid_, registry_, DType::f32),
        arena_(Device::cpu, std::size_t(64) << 20),
        losses_({kBatch * kSeq}, DType::f32, Device::cpu) {
    registry_.allocate();
    model_.initialize(7, {});
  }

  // One micro-batch's forward and backward, as the trainer runs it; `micro_batches` sets the loss scale.
  void run(const Batch& b, GradMode mode, int micro_batches = 1) {
    arena_.reset();
    const float loss_scale = float(1.0 / double(kBatch * kSeq * micro_batches));
    model_.forward(b.tokens, b.targets, b.first_token, true, loss_scale, mode, arena_, losses_, {});
    model_.backward(mode, arena_, {}, {});
  }

  // Every trainable parameter's gradient filled with NaN (the padding keeps its zeros).
  void poison_grads() {
    for (std::size_t i = 0; i < registry_.size(); ++i)
      if (registry_[i].trainable()) poison(registry_[i].grad());
  }

  // This rank's gradient buffers, dp then edp, padding included.
  std::vector<double> grads() const {
    std::vector<double> all;
    for (ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
      const ParameterGroup& group = registry_.group(g);
      if (group.numel == 0) continue;
      const std::vector<double> v = to_vector(group.grad);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  }

  // The elements of the gradient buffers that belong to no parameter, and how many there are.
  std::vector<double> padding() const {
    std::vector<double> out;
    for (ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
      const ParameterGroup& group = registry_.group(g);
      if (group.numel == 0) continue;
      std::vector<char> owned(std::size_t(group.numel), 0);
      for (std::size_t i = 0; i < registry_.size(); ++i) {
        const Parameter& p = registry_[i];
        if (p.reduce_group() != g) continue;
        std::fill_n(owned.begin() + p.offset(), p.numel(), 1);
      }
      const std::vector<double> v = to_vector(group.grad);
      for (std::size_t k = 0; k < v.size(); ++k)
        if (!owned[k]) out.push_back(v[k]);
    }
    return out;
  }

  Model& model() { return model_; }
  ParameterRegistry& registry() { return registry_; }
  int dp_rank() const { return grid_.coords().dp; }

 private:
  static RegistryOptions options(const GridLayout& layout) {
    RegistryOptions o;
    o.dp_size = layout.dp_size();
    o.edp_size = layout.edp_size();
    return o;
  }

  ProcessGrid grid_;
  ParameterRegistry registry_;
  Model model_;
  Arena arena_;
  OwnedTensor losses_;
};

// Names the parameter and element of the first difference, for a readable failure.
std::string first_difference(Rig& rig, const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return "sizes differ";
  for (std::size_t k = 0; k < got.size(); ++k) {
    if (got[k] == want[k]) continue;
    std::int64_t base = 0;
    for (ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
      const ParameterGroup& group = rig.registry().group(g);
      const std::int64_t at = std::int64_t(k) - base;
      if (at < group.numel) {
        for (std::size_t i = 0; i < rig.registry().size(); ++i) {
          const Parameter& p = rig.registry()[i];
          if (p.reduce_group() == g && at >= p.offset() && at < p.offset() + p.numel())
            return p.name() + "[" + std::to_string(at - p.offset()) + "]: " + std::to_string(got[k]) + " vs " +
                   std::to_string(want[k]);
        }
        return "padding of " + std::string(reduce_group_name(g)) + " at " + std::to_string(at);
      }
      base += group.numel;
    }
  }
  return "none";
}

// The properties, on one rig. Batches differ between dp ranks and are the same on tp ranks, as
// the trainer's are; `salt` separates ranks that train alone.
void check_write_modes(Rig& rig, int salt) {
  const std::uint64_t at = std::uint64_t(rig.dp_rank() + salt);
  const Batch a = batch(100 + 10 * at, 1000 * std::int64_t(at));
  const Batch b = batch(200 + 10 * at, 5000 + 1000 * std::int64_t(at));

  // The reference: zeroed gradients, batch B added (what the trainer did before).
  rig.registry().zero_grads();
  rig.run(b, GradMode::accumulate);
  const std::vector<double> fresh_b = rig.grads();
  ASSERT_NE(fresh_b, std::vector<double>(fresh_b.size(), 0.0));

  {
    SCOPED_TRACE("batch A, then batch B overwriting A's gradients");
    rig.run(a, GradMode::overwrite);
    const std::vector<double> after_a = rig.grads();
    EXPECT_NE(after_a, fresh_b) << "batches A and B must give different gradients";
    rig.run(b, GradMode::overwrite);
    const std::vector<double> got = rig.grads();
    EXPECT_TRUE(got == fresh_b) << first_difference(rig, got, fresh_b);
  }
  {
    SCOPED_TRACE("batch B overwriting NaN");
    rig.poison_grads();
    rig.run(b, GradMode::overwrite);
    const std::vector<double> got = rig.grads();
    EXPECT_TRUE(got == fresh_b) << first_difference(rig, got, fresh_b);
  }
  {
    SCOPED_TRACE("two micro-batches: A overwriting NaN, then B added");
    rig.registry().zero_grads();
    rig.run(a, GradMode::accumulate, 2);
    rig.run(b, GradMode::accumulate, 2);
    const std::vector<double> want = rig.grads();
    rig.poison_grads();
    rig.run(a, GradMode::overwrite, 2);
    rig.run(b, GradMode::accumulate, 2);
    const std::vector<double> got = rig.grads();
    EXPECT_TRUE(got == want) << first_difference(rig, got, want);
  }
  const std::vector<double> pad = rig.padding();
  EXPECT_EQ(pad, std::vector<double>(pad.size(), 0.0)) << "padding between parameters was written";
}

class ModelGradModes : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelGradModes, OverwriteGivesTheGradientsOfAZeroedRunOnEachRank) {
  Communicator& world = sy::test::world(Device::cpu);
  auto alone = world.split(world.rank(), 0, "alone");
  Rig rig(config_for(GetParam(), 1, 1), *alone);
  check_write_modes(rig, world.rank());
}

INSTANTIATE_TEST_SUITE_P(Models, ModelGradModes,
                         ::testing::Values(kDenseSeparateQkv, kDenseTied, kMoeCapacity, kMoeDroplessStarved,
                                           kMoeGaussianTied),
                         [](const ::testing::TestParamInfo<ModelCase>& param_info) {
                           std::string name = param_info.param.name;
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

// The dropless case really has idle experts: a zero count in the last forward's routing.
TEST(ModelGradModesSetup, DroplessCaseLeavesSomeExpertWithoutTokens) {
  Communicator& world = sy::test::world(Device::cpu);
  auto alone = world.split(world.rank(), 0, "alone");
  Rig rig(config_for(kMoeDroplessStarved, 1, 1), *alone);
  rig.run(batch(200 + 10 * std::uint64_t(world.rank()), 5000 + 1000 * std::int64_t(world.rank())),
          GradMode::overwrite);
  const std::vector<RouterStats> stats = rig.model().moe_stats({});
  ASSERT_EQ(stats.size(), 1u);
  const std::vector<std::int64_t>& counts = stats[0].tokens_per_expert;
  EXPECT_NE(std::count(counts.begin(), counts.end(), 0), 0) << "every expert got a token";
}

struct Layout {
  int ranks, tp, ep;
  const char* name;
};

// The same properties with tensor, data and expert parallelism: each rank's local gradients
// (before any gradient sync) against its own zeroed run.
TEST(ModelGradModesLayouts, OverwriteGivesTheGradientsOfAZeroedRunAtEveryLayout) {
  Communicator& world = sy::test::world(Device::cpu);
  for (const Layout& layout : {Layout{2, 2, 1, "tp=2"}, Layout{2, 1, 1, "dp=2"}, Layout{2, 1, 2, "dp=2 ep=2"},
                               Layout{4, 2, 2, "dp=2 tp=2 ep=2"}}) {
    if (layout.ranks > world.size()) continue;
    auto job = world.split(world.rank() / layout.ranks, world.rank(), "job");
    for (const ModelCase& c : {kDenseTied, kMoeCapacity, kMoeDroplessStarved, kMoeGaussianTied}) {
      SCOPED_TRACE(::testing::Message() << layout.name << ", " << c.name);
      Rig rig(config_for(c, layout.tp, layout.ep), *job);
      check_write_modes(rig, 0);
    }
  }
}

}  // namespace
}  // namespace sy::test
