// Batch sources: position bookkeeping, the token-shard dataset with its per-epoch order, and
// the synthetic source.
#include "train/data_loader.h"

#include <glob.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <sstream>

#include "core/check.h"
#include "core/rng.h"

namespace sy {
namespace {

// Synthetic tokens use layers from here up, apart from the epoch orders (layer = epoch).
constexpr std::uint32_t kSyntheticLayerBase = 0x80000000u;

std::uint64_t philox_u64(RngKey key, std::uint64_t index) {
  const Philox4 r = philox4x32(key, index);
  return (std::uint64_t(r.v[0]) << 32) | r.v[1];
}

void check_layout(const BatchLayout& layout) {
  SY_CHECK(layout.micro_batch >= 1) << "micro_batch must be at least 1, got " << layout.micro_batch;
  SY_CHECK(layout.seq_len >= 1) << "seq_len must be at least 1, got " << layout.seq_len;
  SY_CHECK(layout.dp_size >= 1 && layout.dp_rank >= 0 && layout.dp_rank < layout.dp_size)
      << "dp rank " << layout.dp_rank << " is outside a data-parallel group of " << layout.dp_size;
  SY_CHECK(layout.vocab_size >= 1) << "vocab_size must be at least 1, got " << layout.vocab_size;
}

bool has_glob_characters(const std::string& pattern) { return pattern.find_first_of("*?[") != std::string::npos; }

}  // namespace

// --- BatchSource ---------------------------------------------------------------------------

BatchSource::BatchSource(const BatchLayout& layout) : layout_(layout) { check_layout(layout); }

void BatchSource::next(const Tensor& inputs, const Tensor& targets) {
  read(position_, inputs, targets);
  position_.step += 1;
  if (position_.step == steps_per_epoch()) position_ = {position_.epoch + 1, 0};
}

void BatchSource::read(const DataPosition& at, const Tensor& inputs, const Tensor& targets) const {
  const Shape shape{layout_.micro_batch, layout_.seq_len};
  auto check_batch_tensor = [&](const char* name, const Tensor& t) {
    SY_CHECK(t.device() == Device::cpu) << "batch " << name << " must be a cpu tensor, got " << t.describe();
    check_dtype("BatchSource::read", name, t, DType::i32);
    check_shape("BatchSource::read", name, t, shape);
    check_contiguous("BatchSource::read", name, t);
  };
  check_batch_tensor("inputs", inputs);
  check_batch_tensor("targets", targets);
  SY_CHECK(at.epoch >= 0 && at.step >= 0 && at.step < steps_per_epoch())
      << "data position (epoch " << at.epoch << ", step " << at.step << ") is outside an epoch of "
      << steps_per_epoch() << " steps";
  const std::int64_t T = layout_.seq_len;
  std::vector<std::int32_t> window(std::size_t(T + 1));
  for (std::int64_t row = 0; row < layout_.micro_batch; ++row) {
    read_window(at, row, window.data());
    std::copy(window.begin(), window.end() - 1, inputs.ptr<std::int32_t>() + row * T);
    std::copy(window.begin() + 1, window.end(), targets.ptr<std::int32_t>() + row * T);
  }
}

void BatchSource::restore(const DataPosition& position) {
  SY_CHECK(position.epoch >= 0 && position.step >= 0 && position.step < steps_per_epoch())
      << "cannot restore data position (epoch " << position.epoch << ", step " << position.step
      << "): an epoch has " << steps_per_epoch() << " steps at this global batch";
  position_ = position;
}

// --- TokenDataset --------------------------------------------------------------------------

std::vector<std::string> expand_shard_pattern(const std::string& pattern) {
  if (!has_glob_characters(pattern)) return {pattern};
  glob_t matches{};
  const int status = ::glob(pattern.c_str(), 0, nullptr, &matches);
  std::vector<std::string> paths(matches.gl_pathv, matches.gl_pathv + matches.gl_pathc);
  ::globfree(&matches);
  SY_CHECK_AS(ErrorKind::data, status == 0 && !paths.empty())
      << pattern << ": no token shards match (prepare the data first)";
  std::sort(paths.begin(), paths.end());
  return paths;
}

TokenDataset::TokenDataset(const std::string& pattern, const BatchLayout& layout)
    : TokenDataset(expand_shard_pattern(pattern), layout) {}

TokenDataset::TokenDataset(const std::vector<std::string>& paths, const BatchLayout& layout) : BatchSource(layout) {
  SY_CHECK_AS(ErrorKind::data, !paths.empty()) << "a token dataset needs at least one shard";
  const std::int64_t T = layout.seq_len;
  shards_.reserve(paths.size());
  first_sequence_.push_back(0);
  for (const auto& path : paths) {
    shards_.emplace_back(path);
    const std::int64_t tokens = shards_.back().token_count();
    const std::int64_t sequences = tokens >= T + 1 ? (tokens - 1) / T : 0;
    first_sequence_.push_back(first_sequence_.back() + sequences);
  }
  sequence_count_ = first_sequence_.back();
  SY_CHECK_AS(ErrorKind::data, sequence_count_ >= layout.sequences_per_step())
      << describe() << ": holds " << sequence_count_ << " sequences of " << T + 1
      << " tokens, fewer than one global batch of " << layout.sequences_per_step() << " (micro_batch "
      << layout.micro_batch << " x dp " << layout.dp_size << ")";
}

TokenDataset::Window TokenDataset::locate(std::int64_t sequence) const {
  SY_CHECK(sequence >= 0 && sequence < sequence_count_)
      << "sequence " << sequence << " is outside a dataset of " << sequence_count_;
  // first_sequence_ is non-decreasing; the shard is the last one starting at or before `sequence`.
  const auto next_shard = std::upper_bound(first_sequence_.begin(), first_sequence_.end(), sequence);
  const auto shard = std::int64_t(next_shard - first_sequence_.begin()) - 1;
  return {shard, (sequence - first_sequence_[std::size_t(shard)]) * layout().seq_len};
}

const std::vector<std::int64_t>& TokenDataset::order(std::int64_t epoch) const {
  if (epoch == cached_epoch_) return cached_order_;
  SY_CHECK(epoch >= 0 && epoch < std::int64_t(kSyntheticLayerBase)) << "epoch " << epoch << " is out of range";
  // Fisher-Yates with Philox draws: draw i depends only on (seed, epoch, i), so every machine
  // builds the same permutation. The modulo bias is below sequences / 2^64.
  const RngKey key{layout().seed, std::uint32_t(RngPurpose::data_order), std::uint32_t(epoch)};
  cached_order_.resize(std::size_t(sequence_count_));
  std::iota(cached_order_.begin(), cached_order_.end(), std::int64_t{0});
  for (std::int64_t i = sequence_count_ - 1; i > 0; --i) {
    const auto j = std::int64_t(philox_u64(key, std::uint64_t(i)) % std::uint64_t(i + 1));
    std::swap(cached_order_[std::size_t(i)], cached_order_[std::size_t(j)]);
  }
  cached_epoch_ = epoch;
  return cached_order_;
}

std::int64_t TokenDataset::token_count() const {
  std::int64_t total = 0;
  for (const auto& shard : shards_) total += shard.token_count();
  return total;
}

std::int64_t TokenDataset::steps_per_epoch() const { return sequence_count_ / layout().sequences_per_step(); }

std::string TokenDataset::describe() const {
  std::ostringstream out;
  out << "token dataset (" << shards_.size() << (shards_.size() == 1 ? " shard" : " shards");
  if (!shards_.empty()) out << ", " << shards_.front().path() << (shards_.size() > 1 ? " ..." : "");
  out << ")";
  return out.str();
}

void TokenDataset::read_window(const DataPosition& at, std::int64_t row, std::int32_t* window) const {
  const BatchLayout& l = layout();
  const std::int64_t slot = at.step * l.sequences_per_step() + std::int64_t(l.dp_rank) * l.micro_batch + row;
  const Window where = locate(order(at.epoch)[std::size_t(slot)]);
  const TokenShard& shard = shards_[std::size_t(where.shard)];
  const std::uint16_t* tokens = shard.tokens().data() + where.first_token;
  for (std::int64_t i = 0; i <= l.seq_len; ++i) {
    SY_CHECK_AS(ErrorKind::data, tokens[i] < l.vocab_size)
        << shard.path() << ": token " << tokens[i] << " at index " << where.first_token + i
        << " is outside the vocabulary (vocab_size " << l.vocab_size << ")";
    window[i] = tokens[i];
  }
}

// --- SyntheticDataset ----------------------------------------------------------------------

SyntheticDataset::SyntheticDataset(const BatchLayout& layout) : BatchSource(layout) {}

std::int64_t SyntheticDataset::steps_per_epoch() const {
  // As many steps as keep the global token index within 64 bits.
  return std::numeric_limits<std::int64_t>::max() / (layout().sequences_per_step() * (layout().seq_len + 1));
}

std::string SyntheticDataset::describe() const {
  std::ostringstream out;
  out << "synthetic tokens (uniform over " << layout().vocab_size << ", seed " << layout().seed << ")";
  return out.str();
}

void SyntheticDataset::read_window(const DataPosition& at, std::int64_t row, std::int32_t* window) const {
  const BatchLayout& l = layout();
  SY_CHECK(at.epoch < std::int64_t(kSyntheticLayerBase)) << "epoch " << at.epoch << " is out of range";
  const RngKey key{l.seed, std::uint32_t(RngPurpose::data_order), kSyntheticLayerBase + std::uint32_t(at.epoch)};
  const std::int64_t sequence = at.step * l.sequences_per_step() + std::int64_t(l.dp_rank) * l.micro_batch + row;
  const auto first = std::uint64_t(sequence) * std::uint64_t(l.seq_len + 1);
  for (std::int64_t i = 0; i <= l.seq_len; ++i) {
    // Multiply-shift maps 32 random bits onto [0, vocab) with bias below vocab / 2^32.
    const std::uint32_t bits = philox4x32(key, first + std::uint64_t(i)).v[0];
    window[i] = std::int32_t((std::uint64_t(bits) * std::uint64_t(l.vocab_size)) >> 32);
  }
}

}  // namespace sy
