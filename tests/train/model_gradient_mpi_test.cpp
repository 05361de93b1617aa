// The whole decoder's backward against central finite differences of its loss, on CPU in f32: a
// dense model whose LM head runs in four logit chunks (the head's backward inside the forward),
// with the fused residual norms, the in-place qkv views and one qkv GEMM. Each rank checks on
// its own (a group of one).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "parallel/parameter.h"
#include "parallel/process_grid.h"
#include "tests/mpi_testing.h"
#include "train/config.h"
#include "train/model.h"

namespace sy::test {
namespace {

constexpr std::int64_t kBatch = 2, kSeq = 16, kVocab = 64;

Config dense_config() {
  return parse_config("", "gradient test",
                      {"run.device=cpu", "model.vocab_size=64", "model.d_model=32", "model.n_layers=2",
                       "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=48", "model.max_seq_len=16",
                       "model.tied_embeddings=false", "moe.every=0", "train.seq_len=16", "train.micro_batch=2",
                       "train.precision=fp32"});
}

TEST(ModelGradients, MatchFiniteDifferencesOfTheLoss) {
  Communicator& world = sy::test::world(Device::cpu);
  auto alone = world.split(world.rank(), 0, "alone");
  const Config config = dense_config();
  ProcessGrid grid(*alone, 1, 1);
  ParameterRegistry registry(RegistryOptions{});
  Model model(config, grid, registry, DType::f32);
  registry.allocate();
  model.initialize(7, {});

  const std::int64_t n = kBatch * kSeq;
  OwnedTensor tokens = random_ints({kBatch, kSeq}, kVocab, Device::cpu, 11);
  OwnedTensor targets = random_ints({kBatch, kSeq}, kVocab, Device::cpu, 12);
  OwnedTensor losses({n}, DType::f32, Device::cpu);
  Arena arena(Device::cpu, std::size_t(64) << 20);
  // Mean token loss, in double over the f32 per-token losses.
  auto mean_loss = [&] {
    arena.reset();
    model.forward(tokens, targets, 0, false, 0.0f, GradMode::overwrite, arena, losses, {});
    const std::vector<double> l = to_vector(losses);
    return std::accumulate(l.begin(), l.end(), 0.0) / double(n);
  };

  arena.reset();
  model.forward(tokens, targets, 0, true, float(1.0 / double(n)), GradMode::overwrite, arena, losses, {});
  model.backward(GradMode::overwrite, arena, {}, {});

  for (const char* name : {"lm_head.weight", "final_norm.weight", "embed.weight", "blocks.1.ffn.up.weight",
                           "blocks.1.ffn_norm.weight", "blocks.0.attn.q.weight", "blocks.0.attn.k.weight",
                           "blocks.0.attn.v.weight", "blocks.0.attn.out.weight", "blocks.0.attn_norm.weight"}) {
    SCOPED_TRACE(name);
    Parameter& p = registry.at(name);
    const std::vector<double> grad = to_vector(p.grad());
    // The three elements with the largest gradients: f32 losses make small ones all noise.
    std::vector<std::size_t> order(grad.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](std::size_t a, std::size_t b) { return std::abs(grad[a]) > std::abs(grad[b]); });
    float* master = p.master().ptr<float>();
    for (int i = 0; i < 3; ++i) {
      const std::size_t at = order[std::size_t(i)];
      const float original = master[at], h = 1e-2f;
      master[at] = original + h;
      const double up = mean_loss();
      master[at] = original - h;
      const double down = mean_loss();
      master[at] = original;
      const double numeric = (up - down) / (2.0 * double(h));
      // f32 losses (~1e-7 relative) over a 2e-2 step, and O(h^2) truncation: a few percent.
      EXPECT_NEAR(grad[at], numeric, 0.03 * std::abs(numeric) + 2e-5) << "element " << at;
    }
  }
}

// The wgmma attention kernels exist for bf16 at head dim 64 on Hopper only: anything else is a
// configuration error that names the key and what the run has.
TEST(ModelConfigErrors, WgmmaAttentionNeedsHopperBf16AndHeadDim64) {
  Communicator& world = sy::test::world(Device::cpu);
  auto alone = world.split(world.rank(), 0, "alone");
  Config config = dense_config();
  config.model.attention_kernel = "wgmma";
  ProcessGrid grid(*alone, 1, 1);
  ParameterRegistry registry(RegistryOptions{});
  expect_error([&] { Model model(config, grid, registry, DType::f32); }, ErrorKind::config,
               "model.attention_kernel=wgmma needs bf16 with head dim 64 on an sm_90 GPU; this run has f32 on cpu "
               "with head dim 8");
}

}  // namespace
}  // namespace sy::test
