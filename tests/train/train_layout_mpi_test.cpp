// End to end on CPU: 20 steps of a small MoE model give the same losses at (dp=1), (dp=2),
// (dp=2, ep=2), (tp=2) and (dp=2, tp=2, ep=2) for the same global batch, and with the last two
// expert-parallel layouts' exchanges pipelined in 3 chunks. Ranks that a layout does not need
// train further copies of it side by side, which must agree too.
#include <cmath>
#include <filesystem>

#include "tests/mpi_testing.h"
#include "train/token_shard.h"
#include "train/trainer.h"

namespace sy::test {
namespace {

struct Layout {
  int ranks, tp, ep;
  const char* name;
  int chunks = 1;  // moe.dispatch_chunks
};

// A learnable token stream: each token determines the next (t' = 5 t + 3 mod 64), with a
// restart every 97 tokens so the model must also read the position's context.
std::string write_pattern_shard(const std::string& dir) {
  std::vector<std::uint16_t> tokens(20000);
  std::uint16_t t = 1;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    t = i % 97 == 0 ? std::uint16_t(i / 97 % 64) : std::uint16_t((5 * t + 3) % 64);
    tokens[i] = t;
  }
  const std::string path = dir + "/pattern_000000.bin";
  write_token_shard(path, tokens);
  return path;
}

// A fresh temporary folder holding the pattern shard (rank 0 writes, everyone waits); returns
// the folder. The shard is <folder>/pattern_000000.bin.
std::string fresh_shard_dir(Communicator& world, const std::string& name) {
  const std::string dir = (std::filesystem::temp_directory_path() / name).string();
  if (world.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    write_pattern_shard(dir);
  }
  world.barrier();
  return dir;
}

Config small_moe_config(const Layout& layout, const std::string& out_dir, const std::string& shard,
                        std::vector<std::string> extra = {}) {
  const int dp = layout.ranks / layout.tp;
  const std::vector<std::string> overrides{
      "run.device=cpu", "run.out_dir=" + out_dir, "model.vocab_size=64", "model.d_model=32", "model.n_layers=2",
      "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=48", "model.max_seq_len=32", "moe.experts=4",
      "moe.every=2", "moe.top_k=2", "moe.noise=jitter",
      // Dropless and global statistics: capacity and balancing do not depend on how the batch
      // is split over data-parallel ranks, so every layout trains the same model.
      "moe.dropless=true", "moe.loss_scope=global", "train.steps=20", "train.seq_len=16",
      "train.micro_batch=" + std::to_string(8 / dp), "train.grad_accum=2", "optimizer.lr=1e-2",
      "schedule.warmup_steps=2", "data.source=bin", "data.train=" + shard, "log.every=100", "log.progress=false", "eval.every=0",
      "parallel.tensor=" + std::to_string(layout.tp), "parallel.expert=" + std::to_string(layout.ep),
      "moe.dispatch_chunks=" + std::to_string(layout.chunks)};
  std::vector<std::string> all = overrides;
  all.insert(all.end(), extra.begin(), extra.end());
  return parse_config("", "layout test", all);
}

TEST(TrainLayouts, SameLossesAtEveryLayout) {
  Communicator& world = sy::test::world(Device::cpu);
  const std::string dir = fresh_shard_dir(world, "sy_train_layouts");
  const std::string shard = dir + "/pattern_000000.bin";
  std::vector<double> reference;
  const Layout layouts[] = {{1, 1, 1, "dp=1"},         {2, 1, 1, "dp=2"},
                            {2, 1, 2, "dp=2 ep=2"},    {2, 2, 1, "tp=2"},
                            {4, 2, 2, "dp=2 tp=2 ep=2"}, {2, 1, 2, "dp=2 ep=2, 3 chunks", 3},
                            {4, 2, 2, "dp=2 tp=2 ep=2, 3 chunks", 3}};
  for (const Layout& layout : layouts) {
    if (layout.ranks > world.size()) continue;
    SCOPED_TRACE(layout.name);
    const int job = world.rank() / layout.ranks;
    const Config config = small_moe_config(layout, dir + "/job" + std::to_string(job), shard);
    const TrainResult result = train(config, mpi_runtime(), job);
    ASSERT_EQ(result.losses.size(), 20u);
    if (reference.empty()) {
      reference = result.losses;
      EXPECT_LT(reference.back(), reference.front() - 1.0) << "the loss must fall";
      continue;
    }
    // fp32 with different reduction orders: differences stay near rounding over 20 steps.
    for (std::size_t s = 0; s < reference.size(); ++s)
      EXPECT_NEAR(result.losses[s], reference[s], 2e-4 * std::abs(reference[s])) << "step " << s + 1;
  }
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

// A run saved at (dp=2, ep=2) after 10 of 20 steps resumes at (dp=4, ep=4) and at (dp=1) and
// continues the loss curve of the run that never stopped.
TEST(TrainLayouts, ResumeAtAnotherLayoutContinuesTheLossCurve) {
  Communicator& world = sy::test::world(Device::cpu);
  if (world.size() < 4) GTEST_SKIP() << "needs 4 ranks";
  const std::string dir = fresh_shard_dir(world, "sy_train_resume");
  const std::string shard = dir + "/pattern_000000.bin";
  const std::string saved = dir + "/saved/checkpoints/step_10.ckpt";

  const Layout dp2_ep2{2, 1, 2, "dp=2 ep=2"};
  const int job = world.rank() / 2;
  const TrainResult whole =
      train(small_moe_config(dp2_ep2, dir + (job == 0 ? "/saved" : "/other"), shard, {"checkpoint.every=10"}),
            mpi_runtime(), job);
  ASSERT_EQ(whole.losses.size(), 20u);
  world.barrier();

  for (const Layout& layout : {Layout{4, 1, 4, "dp=4 ep=4"}, Layout{1, 1, 1, "dp=1"}}) {
    SCOPED_TRACE(layout.name);
    const int resume_job = world.rank() / layout.ranks;
    const Config config = small_moe_config(layout, dir + "/resumed" + std::to_string(resume_job), shard,
                                           {"checkpoint.resume=" + saved});
    const TrainResult resumed = train(config, mpi_runtime(), resume_job);
    ASSERT_EQ(resumed.losses.size(), 10u);
    for (std::size_t s = 0; s < 10; ++s)
      EXPECT_NEAR(resumed.losses[s], whole.losses[10 + s], 2e-4 * std::abs(whole.losses[10 + s])) << "step " << 11 + s;
  }
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

// On a GPU the host enqueues step i + 1 before it reads step i's loss, except around steps that
// log, evaluate or save. Logging every step makes every step wait for the host; both runs must
// give bitwise the same losses (every rank trains its own copy on its own GPU).
TEST(TrainLayouts, StepsEnqueuedAheadGiveTheLossesOfStepsReadOneByOne) {
  Communicator& world = sy::test::world(Device::cpu);
  if (!mpi_runtime().has_gpu_per_rank()) GTEST_SKIP() << "needs a GPU per rank";
  const std::string dir = fresh_shard_dir(world, "sy_train_ahead");
  const std::string shard = dir + "/pattern_000000.bin";
  const std::string out = dir + "/job" + std::to_string(world.rank());
  const Layout one{1, 1, 1, "dp=1"};
  const TrainResult each = train(small_moe_config(one, out, shard, {"run.device=cuda", "log.every=1"}), mpi_runtime(),
                                 world.rank());
  const TrainResult ahead = train(small_moe_config(one, out, shard, {"run.device=cuda", "log.every=7"}), mpi_runtime(),
                                  world.rank());
  ASSERT_EQ(each.losses.size(), 20u);
  ASSERT_EQ(ahead.losses.size(), 20u);
  EXPECT_LT(each.losses.back(), each.losses.front()) << "the loss must fall";
  for (std::size_t s = 0; s < 20; ++s) EXPECT_EQ(ahead.losses[s], each.losses[s]) << "step " << s + 1;
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sy::test
