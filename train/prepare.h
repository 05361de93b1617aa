// `prepare`: text files to byte-level token shards (vocabulary 256, one token per byte) with a
// train/validation split, and the default corpus: the English quotes of the Debian `fortunes`
// package.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct TextReadOptions {
  // fortune(6) files separate quotes with lines holding only '%'; they are not text to learn.
  bool strip_fortune_separators = false;
};

// A text file's bytes as they are, or without the fortune separator lines. An unreadable file
// is an ErrorKind::data error naming it.
std::string read_text_file(const std::string& path, const TextReadOptions& options = {});

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, concatenated in this order
  std::string out_dir;
  // The last val_fraction of the text goes to val_000000.bin, but never less than one sequence
  // of seq_len + 1 tokens, so validation always has a batch row to read.
  double val_fraction = 0.05;
  std::int64_t seq_len = 128;
  std::int64_t shard_tokens = 100'000'000;  // at most this many tokens per train shard
  bool strip_fortune_separators = false;
};

struct PreparedShard {
  std::string path;
  std::int64_t tokens = 0;
};

struct PrepareSummary {
  std::int64_t input_files = 0;
  std::int64_t text_bytes = 0;  // after separator stripping; equals the token count
  std::vector<PreparedShard> train;
  PreparedShard val;

  std::int64_t train_tokens() const;
  // A few lines for the command line: what was read and each file written with its tokens.
  std::string describe() const;
};

// Writes <out_dir>/train_000000.bin, train_000001.bin, ... and <out_dir>/val_000000.bin
// (creating out_dir), and removes stale train_*/val_* shards a larger earlier run left there,
// so a glob over the directory sees exactly this split.
PrepareSummary prepare(const PrepareOptions& options);

inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

// The fortune text files in `dir`, sorted by name: regular files only, skipping the strfile
// indexes (.dat) and the .u8 links. None found is an ErrorKind::data error that says how to
// install the package.
std::vector<std::string> find_default_corpus(const std::string& dir = kFortunesDir);

}  // namespace sy
