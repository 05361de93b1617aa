// Gradient sync, ZeRO-1 and the global gradient norm at 2 and 4 ranks, on MPI (cpu) and NCCL
// (cuda). Every rank's gradients are drawn from a seed that names the rank, so each rank can
// recompute all of them and check the distributed result against a serial one.
#include <algorithm>
#include <cmath>
#include <memory>

#include "parallel/distributed_optimizer.h"
#include "parallel/grad_sync.h"
#include "parallel/process_grid.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

// Small buckets so every model below spans several of them.
constexpr std::size_t kBucketBytes = 2048;

std::uint64_t grad_seed(int rank, int param, int step) {
  return 1000003ull * std::uint64_t(rank + 1) + 1009ull * std::uint64_t(param) + std::uint64_t(step);
}

std::vector<double> rank_gradient(const Parameter& p, int rank, int step) {
  return to_vector(random_tensor(p.local_shape(), DType::f32, Device::cpu, grad_seed(rank, p.index(), step)));
}

// The gradient backward would leave on `rank`.
void fill_gradients(ParameterRegistry& registry, int rank, int step) {
  for (std::size_t i = 0; i < registry.size(); ++i) {
    const Parameter& p = registry[i];
    if (p.trainable()) from_vector(p.grad(), rank_gradient(p, rank, step));
  }
}

// Backward finishes the last layers first.
template <class Sync>
void report_all_ready(ParameterRegistry& registry, Sync& sync) {
  for (std::size_t i = registry.size(); i-- > 0;)
    if (registry[i].trainable()) sync.grad_ready(registry[i]);
}

double squared_norm(const std::vector<double>& x) {
  double sum = 0;
  for (double v : x) sum += v * v;
  return sum;
}

ParameterSpec spec(const std::string& name, const Shape& shape, ReduceGroup reduce = ReduceGroup::dp,
                   bool weight_decay = true) {
  ParameterSpec s;
  s.name = name;
  s.global_shape = shape;
  s.reduce = reduce;
  s.weight_decay = weight_decay;
  return s;
}

// Dense parameters reduced over the whole world (dp = world); with two or more ranks, experts
// split over ep = 2 (ep index = rank % 2) and reduced over edp, the ranks of the same ep index.
struct WorldAsDp {
  Communicator& world;
  int rank;
  int ep_size;
  std::unique_ptr<Communicator> edp;
  std::unique_ptr<ParameterRegistry> registry;

  WorldAsDp(Device device, bool compute_copy)
      : world(sy::test::world(device)), rank(world.rank()), ep_size(world.size() >= 2 ? 2 : 1) {
    if (ep_size > 1) edp = world.split(rank % ep_size, rank, "edp");
    RegistryOptions options;
    options.device = device;
    options.compute_copy = compute_copy;
    options.bucket_bytes = kBucketBytes;
    options.dp_size = world.size();
    options.edp_size = world.size() / ep_size;
    registry = std::make_unique<ParameterRegistry>(options);
    registry->add(spec("embed.weight", {50, 16}));
    registry->add(spec("blocks.0.norm.weight", {16}, ReduceGroup::dp, false));
    registry->add(spec("blocks.0.attn.qkv.weight", {48, 16}));
    registry->add(spec("blocks.0.moe.router.weight", {4, 16}));
    if (ep_size > 1) {
      ParameterSpec w1 = spec("blocks.0.moe.experts.w1", {4, 32, 16}, ReduceGroup::edp);
      w1.ep = {0, ep_size, rank % ep_size};
      registry->add(w1);
      ParameterSpec bias = spec("blocks.0.moe.experts.bias", {4, 32}, ReduceGroup::edp, false);
      bias.ep = {0, ep_size, rank % ep_size};
      registry->add(bias);
    }
    registry->add(spec("final_norm.weight", {16}, ReduceGroup::dp, false));
    registry->add(spec("rope.cos", {10}, ReduceGroup::none));
    registry->allocate();
  }

  // World ranks of one ep index (all ranks for ep_index -1).
  std::vector<int> ranks_of_ep(int ep_index) const {
    std::vector<int> ranks;
    for (int r = 0; r < world.size(); ++r)
      if (ep_index < 0 || r % ep_size == ep_index) ranks.push_back(r);
    return ranks;
  }

  // The serial reduction: the gradients of `ranks` summed, over the full dp size (experts too,
  // see grad_sync.cpp).
  std::vector<double> average(const Parameter& p, const std::vector<int>& ranks, int step) const {
    std::vector<double> sum(std::size_t(p.numel()), 0.0);
    for (int r : ranks) {
      std::vector<double> g = rank_gradient(p, r, step);
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += g[i];
    }
    for (double& v : sum) v /= world.size();
    return sum;
  }

  // What this rank should hold after the sync.
  std::vector<double> expected_gradient(const Parameter& p, int step) const {
    return average(p, ranks_of_ep(p.reduce_group() == ReduceGroup::edp ? rank % ep_size : -1), step);
  }

  // Squared global norm: dense gradients once, the experts of each ep index once.
  double expected_squared_norm(int step) const {
    double total = 0;
    for (std::size_t i = 0; i < registry->size(); ++i) {
      const Parameter& p = (*registry)[i];
      if (!p.trainable()) continue;
      if (p.reduce_group() == ReduceGroup::dp) {
        total += squared_norm(average(p, ranks_of_ep(-1), step));
      } else {
        for (int e = 0; e < ep_size; ++e) total += squared_norm(average(p, ranks_of_ep(e), step));
      }
    }
    return total;
  }

  // Initial masters, the same on every replica: experts differ by ep index only.
  void init_masters() {
    for (std::size_t i = 0; i < registry->size(); ++i) {
      const Parameter& p = (*registry)[i];
      const int ep_index = p.reduce_group() == ReduceGroup::edp ? rank % ep_size : 0;
      const std::uint64_t seed = 77 + 31 * i + 7 * std::size_t(ep_index);
      copy(p.master(), random_tensor(p.local_shape(), DType::f32, Device::cpu, seed));
    }
    registry->refresh_compute_copies();
  }
};

class GradSyncTest : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override { SY_REQUIRE_BACKEND(GetParam()); }
};

TEST_P(GradSyncTest, AllReduceLeavesTheAverageOverDpOnEveryRank) {
  WorldAsDp model(GetParam(), false);
  GradSync sync(*model.registry, model.world, model.edp.get(), false);
  fill_gradients(*model.registry, model.rank, 1);
  report_all_ready(*model.registry, sync);
  sync.finish();
  device_synchronize();
  for (std::size_t i = 0; i < model.registry->size(); ++i) {
    const Parameter& p = (*model.registry)[i];
    if (!p.trainable()) continue;
    // f32 sums of a few N(0, 1) values against a double reference.
    EXPECT_LT(relative_error(to_vector(p.grad()), model.expected_gradient(p, 1)), 1e-6) << p.name();
  }
}

TEST_P(GradSyncTest, BucketIsReducedOnceItsLastGradientIsReady) {
  WorldAsDp model(GetParam(), false);
  ParameterRegistry& registry = *model.registry;
  GradSync sync(registry, model.world, model.edp.get(), false);
  fill_gradients(registry, model.rank, 2);
  const GradientBucket& first = registry.group(ReduceGroup::dp).buckets.front();
  const GradientBucket& last = registry.group(ReduceGroup::dp).buckets.back();
  ASSERT_NE(&first, &last);
  for (int index : first.params) sync.grad_ready(registry[std::size_t(index)]);
  synchronize(sync.comm_stream());
  for (int index : first.params) {
    const Parameter& p = registry[std::size_t(index)];
    EXPECT_LT(relative_error(to_vector(p.grad()), model.expected_gradient(p, 2)), 1e-6) << p.name();
  }
  const Parameter& waiting = registry[std::size_t(last.params.front())];
  EXPECT_EQ(to_vector(waiting.grad()), rank_gradient(waiting, model.rank, 2)) << waiting.name();
  for (std::size_t i = registry.size(); i-- > 0;) {
    const Parameter& p = registry[i];
    if (p.trainable() && (p.reduce_group() != ReduceGroup::dp || p.bucket() != 0)) sync.grad_ready(p);
  }
  sync.finish();
  device_synchronize();
  EXPECT_LT(relative_error(to_vector(waiting.grad()), model.expected_gradient(waiting, 2)), 1e-6);
}

// Two AdamW steps (the first clipped) through DistributedOptimizer, with and without ZeRO-1,
// against AdamW on the full buffers computed serially on each rank.
TEST_P(GradSyncTest, Zero1StepMatchesPlainAdamWOnFullBuffers) {
  for (bool zero1 : {false, true}) {
    SCOPED_TRACE(zero1 ? "zero1" : "plain");
    WorldAsDp model(GetParam(), true);
    ParameterRegistry& registry = *model.registry;
    model.init_masters();
    OptimizerSettings settings;
    settings.zero1 = zero1;
    settings.weight_decay = 0.1f;
    DistributedOptimizer optimizer(registry, model.world, model.world, model.edp.get(), settings);

    struct Reference {
      OwnedTensor master, m, v;
    };
    std::vector<Reference> reference;
    for (std::size_t i = 0; i < registry.size(); ++i) {
      const Parameter& p = registry[i];
      const Shape flat{p.numel()};
      reference.push_back({convert(p.master().reshape(flat), DType::f32, Device::cpu),
                           zeros(flat, DType::f32, Device::cpu), zeros(flat, DType::f32, Device::cpu)});
    }
    const float lr = 1e-2f;
    const float max_norms[] = {1.0f, 0.0f};  // step 1 clips (the norm is about 10), step 2 does not
    for (int step = 1; step <= 2; ++step) {
      registry.zero_grads();
      fill_gradients(registry, model.rank, 10 + step);
      report_all_ready(registry, optimizer);
      optimizer.step(lr, step, max_norms[step - 1]);
      const float norm = optimizer.grad_norm();
      const double expected_norm = std::sqrt(model.expected_squared_norm(10 + step));
      EXPECT_NEAR(norm, expected_norm, 1e-5 * expected_norm) << "step " << step;

      AdamWParams hp;
      hp.lr = lr;
      hp.beta1 = settings.beta1;
      hp.beta2 = settings.beta2;
      hp.eps = settings.eps;
      hp.step = step;
      const float max_norm = max_norms[step - 1];
      hp.grad_scale = max_norm > 0 ? float(std::min(1.0, max_norm / (expected_norm + 1e-6))) : 1.0f;
      for (std::size_t i = 0; i < registry.size(); ++i) {
        const Parameter& p = registry[i];
        if (!p.trainable()) continue;
        OwnedTensor grad({p.numel()}, DType::f32, Device::cpu);
        from_vector(grad, model.expected_gradient(p, 10 + step));
        hp.weight_decay = p.spec().weight_decay ? settings.weight_decay : 0.0f;
        adamw_update(reference[i].master, grad, reference[i].m, reference[i].v, Tensor(), hp);
      }
    }
    device_synchronize();
    for (std::size_t i = 0; i < registry.size(); ++i) {
      const Parameter& p = registry[i];
      const std::vector<double> master = to_vector(p.master()), expected = to_vector(reference[i].master);
      const std::vector<double> compute = to_vector(p.compute());
      ASSERT_EQ(master.size(), expected.size());
      for (std::size_t k = 0; k < master.size(); ++k) {
        EXPECT_NEAR(master[k], expected[k], 1e-6) << p.name() << "[" << k << "]";
        // The compute copy is the master rounded to bf16 (8 bits of mantissa).
        EXPECT_NEAR(compute[k], master[k], std::abs(master[k]) / 256 + 1e-30) << p.name() << "[" << k << "]";
      }
    }
  }
}

// On a real grid (tp x dp, ep x edp): tp-split parameters count every shard, tp-replicated ones
// once, dp/edp replicas once, experts once per ep index. The reference gathers every rank's
// unreduced gradients and rebuilds the global gradient in double.
TEST_P(GradSyncTest, GlobalNormCountsEveryElementOnce) {
  Communicator& world_comm = world(GetParam());
  const int world_size = world_comm.size();
  for (int tp : {1, 2}) {
    if (world_size % tp != 0) continue;
    const int dp = world_size / tp, ep = dp % 2 == 0 ? 2 : 1;
    for (bool zero1 : {false, true}) {
      SCOPED_TRACE("tp " + std::to_string(tp) + ", ep " + std::to_string(ep) + (zero1 ? ", zero1" : ""));
      ProcessGrid grid(world_comm, tp, ep);
      const GridLayout& layout = grid.layout();
      const GridCoords& me = grid.coords();
      RegistryOptions options;
      options.device = GetParam();
      options.bucket_bytes = kBucketBytes;
      options.dp_size = layout.dp_size();
      options.edp_size = layout.edp_size();
      ParameterRegistry registry(options);
      const AxisSplit tp_rows{0, tp, grid.tp().rank()}, tp_columns{1, tp, grid.tp().rank()};
      const AxisSplit tp_replicated{-1, tp, grid.tp().rank()};
      ParameterSpec embed = spec("embed.weight", {24, 16});
      embed.tp = tp_rows;
      ParameterSpec norm = spec("blocks.0.norm.weight", {16}, ReduceGroup::dp, false);
      norm.tp = tp_replicated;
      ParameterSpec qkv = spec("blocks.0.attn.qkv.weight", {16, 48});
      qkv.tp = tp_columns;
      ParameterSpec w1 = spec("blocks.0.moe.experts.w1", {4, 16, 32}, ReduceGroup::edp);
      w1.tp = {2, tp, grid.tp().rank()};
      w1.ep = {0, ep, grid.ep().rank()};
      ParameterSpec scale = spec("blocks.0.moe.experts.scale", {4}, ReduceGroup::edp, false);
      scale.tp = tp_replicated;
      scale.ep = {0, ep, grid.ep().rank()};
      ParameterSpec router = spec("blocks.0.moe.router.weight", {4, 16});
      router.tp = tp_replicated;
      for (const ParameterSpec& s : {embed, norm, qkv, w1, scale, router}) registry.add(s);
      registry.add(spec("rope.cos", {8}, ReduceGroup::none));
      registry.allocate();
      fill_gradients(registry, world_comm.rank(), 5);

      // Every rank's unreduced gradient of every parameter, gathered before the sync.
      std::vector<std::vector<double>> gathered;
      for (std::size_t i = 0; i < registry.size(); ++i) {
        const Parameter& p = registry[i];
        gathered.emplace_back();
        if (!p.trainable()) continue;
        OwnedTensor all({world_size * p.numel()}, DType::f32, GetParam());
        world_comm.all_gather(p.grad().reshape({p.numel()}), all);
        device_synchronize();
        gathered.back() = to_vector(all);
      }

      OptimizerSettings settings;
      settings.zero1 = zero1;
      DistributedOptimizer optimizer(registry, world_comm, grid.dp(), &grid.edp(), settings);
      report_all_ready(registry, optimizer);
      optimizer.step(1e-3f, 1, 0.5f);
      const float norm_value = optimizer.grad_norm();

      double total = 0;
      for (std::size_t i = 0; i < gathered.size(); ++i) {
        const Parameter& p = registry[i];
        if (!p.trainable()) continue;
        const std::int64_t n = p.numel();
        const bool expert = p.reduce_group() == ReduceGroup::edp;
        for (int t = 0; t < (p.spec().tp.split() ? tp : 1); ++t) {
          for (int e = 0; e < (expert ? ep : 1); ++e) {
            std::vector<double> sum(std::size_t(n), 0.0);
            for (int w = 0; w < world_size; ++w) {
              const GridCoords c = layout.coords(w);
              if (c.tp != t || (expert && c.ep != e)) continue;
              for (std::int64_t k = 0; k < n; ++k) sum[std::size_t(k)] += gathered[i][std::size_t(w * n + k)];
            }
            total += squared_norm(sum) / (double(dp) * dp);
          }
        }
      }
      EXPECT_EQ(me.tp, grid.tp().rank());
      EXPECT_NEAR(norm_value, std::sqrt(total), 1e-5 * std::sqrt(total));
    }
  }
}

TEST_P(GradSyncTest, ReadinessErrorsNameTheParameter) {
  WorldAsDp model(GetParam(), false);
  ParameterRegistry& registry = *model.registry;
  {
    GradSync sync(registry, model.world, model.edp.get(), false);
    report_all_ready(registry, sync);
    expect_error([&] { sync.grad_ready(registry.at("embed.weight")); },
                 "grad_ready: parameter embed.weight was already reported ready in this step");
    expect_error([&] { sync.grad_ready(registry.at("rope.cos")); },
                 "grad_ready: parameter rope.cos is frozen (reduce group none)");
    sync.finish();
  }
  {
    RegistryOptions options = registry.options();
    ParameterRegistry other(options);
    Parameter& stranger = other.add(spec("stranger", {4}));
    other.allocate();
    GradSync sync(registry, model.world, model.edp.get(), false);
    expect_error([&] { sync.grad_ready(stranger); }, "grad_ready: parameter stranger belongs to another registry");
    // Every rank leaves out the same parameter, so its bucket never starts anywhere.
    const Parameter& skipped = registry.at("blocks.0.norm.weight");
    for (std::size_t i = registry.size(); i-- > 0;)
      if (registry[i].trainable() && &registry[i] != &skipped) sync.grad_ready(registry[i]);
    expect_error([&] { sync.finish(); }, "GradSync::finish: parameter blocks.0.norm.weight was never reported ready");
  }
}

TEST_P(GradSyncTest, RejectsCommunicatorsThatDoNotMatchTheLayout) {
  WorldAsDp model(GetParam(), false);
  if (model.world.size() < 2) GTEST_SKIP() << "needs two ranks";
  expect_error([&] { GradSync(*model.registry, *model.edp, model.edp.get(), false); },
               "GradSync: the registry was planned for dp size");
  expect_error([&] { GradSync(*model.registry, model.world, nullptr, false); },
               "GradSync: parameters are reduced over edp but no edp communicator was given");
}

INSTANTIATE_TEST_SUITE_P(Devices, GradSyncTest, ::testing::Values(Device::cpu, Device::cuda), device_param_name);

}  // namespace
}  // namespace sy::test
