// Training batches for each data-parallel rank. A BatchSource yields micro-batches of
// (inputs, targets) [micro_batch, seq_len] i32 from a position (epoch, step) that checkpoints
// save; TokenDataset reads token shards in a seeded order, SyntheticDataset draws tokens from
// Philox for throughput runs.
//
// Step s of an epoch takes sequences [s*B*dp, (s+1)*B*dp) of that epoch's order and dp rank r
// the r-th B of them, so the global batch of a step is the same at every dp size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/token_shard.h"

namespace sy {

// Where a source stands: the next micro-batch is step `step` of epoch `epoch`. Restoring a
// saved position continues the exact sequence of batches.
struct DataPosition {
  std::int64_t epoch = 0;
  std::int64_t step = 0;
  bool operator==(const DataPosition&) const = default;
};

struct BatchLayout {
  std::int64_t micro_batch = 8;  // B: sequences per rank per step
  std::int64_t seq_len = 128;    // T: a sequence holds T + 1 tokens (inputs and the shifted targets)
  int dp_rank = 0;
  int dp_size = 1;
  std::uint64_t seed = 1234;
  std::int64_t vocab_size = 256;  // every token must be below this

  std::int64_t sequences_per_step() const { return micro_batch * dp_size; }
};

// The interface the trainer reads batches through.
class BatchSource {
 public:
  explicit BatchSource(const BatchLayout& layout);
  virtual ~BatchSource() = default;
  BatchSource(const BatchSource&) = delete;
  BatchSource& operator=(const BatchSource&) = delete;

  // Fills this rank's micro-batch at the current position and advances by one step.
  // inputs, targets: [micro_batch, seq_len] i32 cpu, contiguous.
  void next(const Tensor& inputs, const Tensor& targets);
  // The same micro-batch `next` would give at `at`, without moving.
  void read(const DataPosition& at, const Tensor& inputs, const Tensor& targets) const;

  const DataPosition& position() const { return position_; }
  void restore(const DataPosition& position);
  const BatchLayout& layout() const { return layout_; }
  // Whole global batches per epoch; the remainder of the order is skipped at the epoch end.
  virtual std::int64_t steps_per_epoch() const = 0;
  virtual std::string describe() const = 0;

 protected:
  // Writes the T + 1 tokens of row `row` of the micro-batch at `at` into `window`.
  virtual void read_window(const DataPosition& at, std::int64_t row, std::int32_t* window) const = 0;

 private:
  BatchLayout layout_;
  DataPosition position_;
};

// Token shards cut into sequences: windows of T + 1 tokens starting every T tokens within a
// shard (neighbours share one token, so every token but a shard's first is a target once, as
// in llm.c). A window never crosses a shard end. Each epoch visits the sequences in a
// permutation keyed by (seed, data_order, epoch), the same on every machine.
class TokenDataset final : public BatchSource {
 public:
  // `pattern`: a glob ("data/fortunes/train_*.bin", sorted by name) or one file name.
  TokenDataset(const std::string& pattern, const BatchLayout& layout);
  TokenDataset(const std::vector<std::string>& paths, const BatchLayout& layout);

  // Where global sequence `sequence` (in shard order, before shuffling) lies.
  struct Window {
    std::int64_t shard = 0;
    std::int64_t first_token = 0;
  };
  Window locate(std::int64_t sequence) const;
  // The epoch's order: order[i] is the sequence visited i-th. The reference is to a cache that
  // the next call for another epoch replaces (a source is read from one thread).
  const std::vector<std::int64_t>& order(std::int64_t epoch) const;

  std::int64_t sequence_count() const { return sequence_count_; }
  std::int64_t token_count() const;
  const std::vector<TokenShard>& shards() const { return shards_; }
  std::int64_t steps_per_epoch() const override;
  std::string describe() const override;

 protected:
  void read_window(const DataPosition& at, std::int64_t row, std::int32_t* window) const override;

 private:
  std::vector<TokenShard> shards_;
  std::vector<std::int64_t> first_sequence_;  // per shard, and the total at the end
  std::int64_t sequence_count_ = 0;
  // The permutation of one epoch, kept because consecutive steps read the same epoch.
  mutable std::int64_t cached_epoch_ = -1;
  mutable std::vector<std::int64_t> cached_order_;
};

// Uniform random tokens for throughput runs: token i of global sequence g is a pure function of
// (seed, g * (T + 1) + i), so every rank and dp size sees the same global batch. Its epoch is
// unbounded.
class SyntheticDataset final : public BatchSource {
 public:
  explicit SyntheticDataset(const BatchLayout& layout);
  std::int64_t steps_per_epoch() const override;
  std::string describe() const override;

 protected:
  void read_window(const DataPosition& at, std::int64_t row, std::int32_t* window) const override;
};

// The files a glob names, sorted; a pattern without wildcards is returned as is so that a
// missing file is reported by whoever opens it. No match is an ErrorKind::data error.
std::vector<std::string> expand_shard_pattern(const std::string& pattern);

}  // namespace sy
