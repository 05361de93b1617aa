// Batch sources: windows stay inside shards, targets shift inputs by one, every dp size sees
// the same global batch, positions restore exactly, and epochs reshuffle deterministically.
#include "train/data_loader.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <numeric>
#include <set>
#include <vector>

#include "tests/testing.h"
#include "tests/train/temp_dir.h"

namespace sy::test {
namespace {

// Token p of shard i is i * 1000 + p, so a token names the shard and position it came from.
std::vector<std::string> write_numbered_shards(const TempDir& dir, const std::vector<int>& sizes) {
  std::vector<std::string> paths;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    std::vector<std::uint16_t> tokens(std::size_t(sizes[i]));
    for (int p = 0; p < sizes[i]; ++p) tokens[std::size_t(p)] = std::uint16_t(i * 1000 + std::size_t(p));
    char name[32];
    std::snprintf(name, sizeof(name), "train_%06zu.bin", i);
    paths.push_back(dir.file(name));
    write_token_shard(paths.back(), tokens);
  }
  return paths;
}

BatchLayout layout_of(std::int64_t micro_batch, std::int64_t seq_len, int dp_rank = 0, int dp_size = 1,
                      std::uint64_t seed = 7, std::int64_t vocab_size = 8000) {
  BatchLayout layout;
  layout.micro_batch = micro_batch;
  layout.seq_len = seq_len;
  layout.dp_rank = dp_rank;
  layout.dp_size = dp_size;
  layout.seed = seed;
  layout.vocab_size = vocab_size;
  return layout;
}

struct Batch {
  std::vector<std::int32_t> inputs, targets;
  bool operator==(const Batch&) const = default;
};

Batch next_batch(BatchSource& source) {
  const BatchLayout& l = source.layout();
  OwnedTensor inputs({l.micro_batch, l.seq_len}, DType::i32, Device::cpu);
  OwnedTensor targets({l.micro_batch, l.seq_len}, DType::i32, Device::cpu);
  source.next(inputs, targets);
  const auto n = std::size_t(l.micro_batch * l.seq_len);
  const std::int32_t* in = inputs.view().ptr<std::int32_t>();
  const std::int32_t* tg = targets.view().ptr<std::int32_t>();
  return {{in, in + n}, {tg, tg + n}};
}

// The global batch of the next step: every rank's micro-batch, rank 0 first.
Batch next_global_batch(std::vector<std::unique_ptr<BatchSource>>& ranks) {
  Batch global;
  for (auto& rank : ranks) {
    Batch b = next_batch(*rank);
    global.inputs.insert(global.inputs.end(), b.inputs.begin(), b.inputs.end());
    global.targets.insert(global.targets.end(), b.targets.begin(), b.targets.end());
  }
  return global;
}

const std::vector<int> kShardSizes = {101, 250, 37, 3, 64};  // shard 3 is shorter than one window
constexpr std::int64_t kSeqLen = 8;
// (100 / 8) + (249 / 8) + (36 / 8) + 0 + (63 / 8): windows of 9 tokens starting every 8.
constexpr std::int64_t kSequences = 12 + 31 + 4 + 0 + 7;

TEST(TokenDataset, CutsShardsIntoWindowsOfSeqLenPlusOne) {
  TempDir dir;
  TokenDataset dataset(write_numbered_shards(dir, kShardSizes), layout_of(2, kSeqLen));
  EXPECT_EQ(dataset.sequence_count(), kSequences);
  EXPECT_EQ(dataset.token_count(), 101 + 250 + 37 + 3 + 64);
  EXPECT_EQ(dataset.steps_per_epoch(), kSequences / 2);
  EXPECT_EQ(dataset.locate(0).shard, 0);
  EXPECT_EQ(dataset.locate(11).first_token, 88);
  EXPECT_EQ(dataset.locate(12).shard, 1);
  EXPECT_EQ(dataset.locate(12).first_token, 0);
  EXPECT_EQ(dataset.locate(kSequences - 1).shard, 4);  // the too-short shard 3 holds none
  EXPECT_EQ(dataset.locate(kSequences - 1).first_token, 48);
}

TEST(TokenDataset, WindowsNeverCrossShardsAndTargetsAreInputsShifted) {
  TempDir dir;
  TokenDataset dataset(write_numbered_shards(dir, kShardSizes), layout_of(3, kSeqLen));
  std::multiset<std::int32_t> epoch_starts;
  for (std::int64_t step = 0; step < dataset.steps_per_epoch(); ++step) {
    const Batch batch = next_batch(dataset);
    for (std::int64_t row = 0; row < 3; ++row) {
      const std::int32_t* in = batch.inputs.data() + row * kSeqLen;
      const std::int32_t* tg = batch.targets.data() + row * kSeqLen;
      const int shard = in[0] / 1000, start = in[0] % 1000;
      EXPECT_EQ(start % kSeqLen, 0) << "windows start every seq_len tokens";
      EXPECT_LE(start + kSeqLen, kShardSizes[std::size_t(shard)] - 1) << "window runs past shard " << shard;
      for (std::int64_t t = 0; t < kSeqLen; ++t) {
        EXPECT_EQ(in[t], in[0] + t) << "inputs come from one shard, in order";
        EXPECT_EQ(tg[t], in[t] + 1) << "target is the next token";
      }
      epoch_starts.insert(in[0]);
    }
  }
  // 54 sequences, 18 steps of 3: every sequence once per epoch.
  EXPECT_EQ(std::int64_t(epoch_starts.size()), kSequences);
  EXPECT_EQ(std::set<std::int32_t>(epoch_starts.begin(), epoch_starts.end()).size(), epoch_starts.size());
}

TEST(TokenDataset, SameGlobalBatchAtDp1Dp2AndDp4) {
  TempDir dir;
  const auto paths = write_numbered_shards(dir, kShardSizes);
  constexpr std::int64_t kGlobalBatch = 8;
  std::vector<Batch> reference;
  for (int dp : {1, 2, 4}) {
    std::vector<std::unique_ptr<BatchSource>> ranks;
    for (int r = 0; r < dp; ++r) {
      ranks.push_back(std::make_unique<TokenDataset>(paths, layout_of(kGlobalBatch / dp, kSeqLen, r, dp)));
    }
    // Past an epoch end (6 steps of 8 from 54 sequences) so the next epoch's order is covered too.
    for (int step = 0; step < 9; ++step) {
      Batch global = next_global_batch(ranks);
      if (dp == 1) {
        reference.push_back(global);
      } else {
        EXPECT_EQ(global, reference[std::size_t(step)]) << "dp " << dp << ", step " << step;
      }
    }
    EXPECT_EQ(ranks[0]->position(), (DataPosition{1, 3}));
  }
}

TEST(TokenDataset, RestoredPositionContinuesIdentically) {
  TempDir dir;
  const auto paths = write_numbered_shards(dir, kShardSizes);
  TokenDataset original(paths, layout_of(4, kSeqLen));
  ASSERT_EQ(original.steps_per_epoch(), 13);
  for (int step = 0; step < 11; ++step) next_batch(original);
  const DataPosition saved = original.position();
  EXPECT_EQ(saved, (DataPosition{0, 11}));
  std::vector<Batch> expected;
  for (int step = 0; step < 5; ++step) expected.push_back(next_batch(original));  // crosses into epoch 1
  EXPECT_EQ(original.position(), (DataPosition{1, 3}));

  TokenDataset resumed(paths, layout_of(4, kSeqLen));
  resumed.restore(saved);
  for (int step = 0; step < 5; ++step) EXPECT_EQ(next_batch(resumed), expected[std::size_t(step)]) << step;

  expect_error([&] { resumed.restore({0, 13}); }, ErrorKind::invalid_argument,
               "cannot restore data position (epoch 0, step 13): an epoch has 13 steps at this global batch");
}

TEST(TokenDataset, EpochsReshuffleAndTheSameSeedGivesTheSameOrder) {
  TempDir dir;
  const auto paths = write_numbered_shards(dir, kShardSizes);
  TokenDataset a(paths, layout_of(2, kSeqLen, 0, 1, 7));
  TokenDataset b(paths, layout_of(2, kSeqLen, 0, 1, 7));
  TokenDataset other_seed(paths, layout_of(2, kSeqLen, 0, 1, 8));

  const std::vector<std::int64_t> epoch0 = a.order(0), epoch1 = a.order(1);
  std::vector<std::int64_t> sorted = epoch0;
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < kSequences; ++i) ASSERT_EQ(sorted[std::size_t(i)], i) << "not a permutation";
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(b.order(1), epoch1);
  EXPECT_EQ(b.order(0), epoch0);
  EXPECT_NE(other_seed.order(0), epoch0);
  // A shuffle, not the identity: shard order would put all of shard 0 first.
  std::vector<std::int64_t> identity(static_cast<std::size_t>(kSequences));
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epoch0, identity);
}

TEST(TokenDataset, TokenOutsideTheVocabularyNamesTheShard) {
  TempDir dir;
  std::vector<std::uint16_t> tokens(17, 65);
  tokens[5] = 300;
  const std::string path = dir.file("bad.bin");
  write_token_shard(path, tokens);
  TokenDataset dataset(std::vector<std::string>{path}, layout_of(1, 8, 0, 1, 7, 256));
  ASSERT_EQ(dataset.steps_per_epoch(), 2);
  expect_error([&] {
    next_batch(dataset);
    next_batch(dataset);
  }, ErrorKind::data, path + ": token 300 at index 5 is outside the vocabulary (vocab_size 256)");
}

TEST(TokenDataset, GlobMatchesShardsInNameOrder) {
  TempDir dir;
  const auto paths = write_numbered_shards(dir, {20, 20, 20});
  write_token_shard(dir.file("val_000000.bin"), std::vector<std::uint16_t>(20, 1));
  EXPECT_EQ(expand_shard_pattern(dir.file("train_*.bin")), paths);
  EXPECT_EQ(expand_shard_pattern(dir.file("val_000000.bin")), std::vector<std::string>{dir.file("val_000000.bin")});

  TokenDataset dataset(dir.file("train_*.bin"), layout_of(1, 4));
  EXPECT_EQ(dataset.shards().size(), 3u);
  EXPECT_EQ(dataset.sequence_count(), 3 * 4);

  expect_error([&] { expand_shard_pattern(dir.file("test_*.bin")); }, ErrorKind::data,
               dir.file("test_*.bin") + ": no token shards match");
  expect_error([&] { TokenDataset missing(dir.file("train_000009.bin"), layout_of(1, 4)); }, ErrorKind::data,
               dir.file("train_000009.bin") + ": cannot open token shard");
}

TEST(TokenDataset, FewerSequencesThanOneGlobalBatchIsAnError) {
  TempDir dir;
  const auto paths = write_numbered_shards(dir, {41});  // 5 sequences of 9 tokens
  expect_error([&] { TokenDataset dataset(paths, layout_of(3, 8, 0, 2)); }, ErrorKind::data,
               "holds 5 sequences of 9 tokens, fewer than one global batch of 6 (micro_batch 3 x dp 2)");
}

TEST(TokenDataset, BatchTensorsMustMatchTheLayout) {
  TempDir dir;
  TokenDataset dataset(write_numbered_shards(dir, {100}), layout_of(2, 8));
  OwnedTensor inputs({2, 8}, DType::i32, Device::cpu), wrong({2, 9}, DType::i32, Device::cpu);
  expect_error([&] { dataset.next(inputs, wrong); }, ErrorKind::invalid_argument, "targets");
  EXPECT_EQ(dataset.position(), (DataPosition{0, 0})) << "a failed read does not advance";
}

TEST(SyntheticDataset, DeterministicUniformTokensWithShiftedTargets) {
  SyntheticDataset a(layout_of(4, 32, 0, 1, 11, 50)), b(layout_of(4, 32, 0, 1, 11, 50));
  SyntheticDataset other_seed(layout_of(4, 32, 0, 1, 12, 50));
  std::vector<int> counts(50, 0);
  for (int step = 0; step < 25; ++step) {
    const Batch batch = next_batch(a);
    EXPECT_EQ(next_batch(b), batch);
    EXPECT_NE(next_batch(other_seed), batch);
    for (int row = 0; row < 4; ++row) {
      for (int t = 0; t + 1 < 32; ++t) {
        EXPECT_EQ(batch.targets[std::size_t(row * 32 + t)], batch.inputs[std::size_t(row * 32 + t + 1)]);
      }
    }
    for (std::int32_t token : batch.inputs) {
      ASSERT_GE(token, 0);
      ASSERT_LT(token, 50);
      counts[std::size_t(token)] += 1;
    }
  }
  // 3200 draws over 50 values: 64 expected each; 20 and 120 are more than 5 sigma away.
  for (int v = 0; v < 50; ++v) {
    EXPECT_GT(counts[std::size_t(v)], 20) << v;
    EXPECT_LT(counts[std::size_t(v)], 120) << v;
  }
}

TEST(SyntheticDataset, SameGlobalBatchAtDp1AndDp4AndAfterRestore) {
  std::vector<std::unique_ptr<BatchSource>> one, four;
  one.push_back(std::make_unique<SyntheticDataset>(layout_of(8, 16)));
  for (int r = 0; r < 4; ++r) four.push_back(std::make_unique<SyntheticDataset>(layout_of(2, 16, r, 4)));
  std::vector<Batch> reference;
  for (int step = 0; step < 4; ++step) {
    reference.push_back(next_global_batch(one));
    EXPECT_EQ(next_global_batch(four), reference.back()) << step;
  }
  SyntheticDataset resumed(layout_of(8, 16));
  resumed.restore({0, 2});
  EXPECT_EQ(next_batch(resumed), reference[2]);
  EXPECT_EQ(next_batch(resumed), reference[3]);
}

}  // namespace
}  // namespace sy::test
