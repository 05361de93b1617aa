// prepare: byte-level shards with the documented train/validation split, exact byte round
// trips, fortune separator stripping, and the default corpus lookup.
#include "train/prepare.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/testing.h"
#include "tests/train/temp_dir.h"
#include "train/token_shard.h"

namespace sy::test {
namespace {

// Every byte value, zero included, in a pattern that does not repeat with the shard size.
std::string all_byte_values(std::size_t count, unsigned seed) {
  std::string text(count, '\0');
  for (std::size_t i = 0; i < count; ++i) text[i] = char((i * 131 + seed * 17 + i / 7) % 256);
  return text;
}

std::string shard_bytes(const std::string& path) {
  TokenShard shard(path);
  std::string bytes;
  for (std::uint16_t token : shard.tokens()) {
    EXPECT_LT(token, 256);
    bytes.push_back(char(token));
  }
  return bytes;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Prepare, SplitsTrainAndValidationWithTheDocumentedSizes) {
  TempDir dir;
  const std::string first = all_byte_values(6000, 1), second = all_byte_values(4000, 2);
  write_bytes(dir.file("a.txt"), first);
  write_bytes(dir.file("b.txt"), second);
  PrepareOptions options;
  options.inputs = {dir.file("a.txt"), dir.file("b.txt")};
  options.out_dir = dir.file("shards");
  options.seq_len = 16;
  options.shard_tokens = 3000;
  const PrepareSummary summary = prepare(options);

  // 10000 bytes: the last 5% (500) is validation, 9500 train in shards of at most 3000.
  EXPECT_EQ(summary.input_files, 2);
  EXPECT_EQ(summary.text_bytes, 10000);
  EXPECT_EQ(summary.val.tokens, 500);
  EXPECT_EQ(summary.val.path, dir.file("shards/val_000000.bin"));
  ASSERT_EQ(summary.train.size(), 4u);
  EXPECT_EQ(summary.train_tokens(), 9500);
  const std::vector<std::int64_t> sizes = {3000, 3000, 3000, 500};
  for (std::size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(summary.train[i].tokens, sizes[i]) << i;
  EXPECT_EQ(summary.train[1].path, dir.file("shards/train_000001.bin"));
  EXPECT_EQ(names_in(dir.file("shards")), (std::vector<std::string>{"train_000000.bin", "train_000001.bin",
                                                                    "train_000002.bin", "train_000003.bin",
                                                                    "val_000000.bin"}));

  std::string round_trip;
  for (const auto& shard : summary.train) round_trip += shard_bytes(shard.path);
  round_trip += shard_bytes(summary.val.path);
  EXPECT_EQ(round_trip, first + second) << "every byte, in order, is one token";
  EXPECT_NE(summary.describe().find("9500 train tokens in 4 shards, 500 validation tokens"), std::string::npos)
      << summary.describe();
}

TEST(Prepare, ValidationHoldsAtLeastOneSequence) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), all_byte_values(100, 3));
  PrepareOptions options;
  options.inputs = {dir.file("a.txt")};
  options.out_dir = dir.path();
  options.seq_len = 16;  // 5% of 100 is 5 bytes, less than one window of 17
  const PrepareSummary summary = prepare(options);
  EXPECT_EQ(summary.val.tokens, 17);
  EXPECT_EQ(summary.train_tokens(), 83);
  EXPECT_EQ(TokenShard(summary.val.path).token_count(), 17);
}

TEST(Prepare, RerunRemovesStaleShardsOfAnEarlierSplit) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), all_byte_values(1000, 4));
  write_bytes(dir.file("notes.bin"), "kept");
  PrepareOptions options;
  options.inputs = {dir.file("a.txt")};
  options.out_dir = dir.path();
  options.seq_len = 8;
  options.shard_tokens = 300;
  ASSERT_EQ(prepare(options).train.size(), 4u);
  options.shard_tokens = 1000;
  ASSERT_EQ(prepare(options).train.size(), 1u);
  EXPECT_EQ(names_in(dir.path()),
            (std::vector<std::string>{"a.txt", "notes.bin", "train_000000.bin", "val_000000.bin"}));
}

TEST(Prepare, InputProblemsAreOneClearErrorEach) {
  TempDir dir;
  PrepareOptions options;
  options.out_dir = dir.file("out");
  expect_error([&] { prepare(options); }, ErrorKind::data, "prepare: no input text files given");

  options.inputs = {dir.file("missing.txt")};
  expect_error([&] { prepare(options); }, ErrorKind::data, dir.file("missing.txt") + ": cannot read text file: ");

  write_bytes(dir.file("empty.txt"), "");
  options.inputs = {dir.file("empty.txt")};
  expect_error([&] { prepare(options); }, ErrorKind::data, "prepare: the input text is empty (1 files)");

  write_bytes(dir.file("only_separators.txt"), "%\n%\n");
  options.inputs = {dir.file("only_separators.txt")};
  options.strip_fortune_separators = true;
  expect_error([&] { prepare(options); }, ErrorKind::data,
               "prepare: the input text is empty (1 files, after removing fortune separator lines)");

  write_bytes(dir.file("short.txt"), "thirty bytes of text, no more.");
  options.inputs = {dir.file("short.txt")};
  options.seq_len = 16;
  expect_error([&] { prepare(options); }, ErrorKind::data,
               "prepare: 30 bytes of text is too little: a training and a validation sequence of 17 tokens need 34");
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/train_000000.bin")));
}

TEST(TextReader, FortuneSeparatorLinesAreRemoved) {
  TempDir dir;
  const std::string text = "%\nFirst quote.\n%\nSecond quote,\n  two lines.\n%\n%% not a separator\n100%\n%";
  write_bytes(dir.file("quotes"), text);
  EXPECT_EQ(read_text_file(dir.file("quotes")), text) << "plain text is read as is";
  EXPECT_EQ(read_text_file(dir.file("quotes"), {.strip_fortune_separators = true}),
            "First quote.\nSecond quote,\n  two lines.\n%% not a separator\n100%\n");
}

TEST(DefaultCorpus, FindsFortuneTextFilesButNotIndexesOrLinks) {
  TempDir dir;
  write_bytes(dir.file("zen"), "Be.\n%\n");
  write_bytes(dir.file("art"), "Art.\n%\n");
  write_bytes(dir.file("art.dat"), std::string(24, '\0'));
  std::filesystem::create_symlink("art", dir.file("art.u8"));
  std::filesystem::create_directory(dir.file("off"));
  EXPECT_EQ(find_default_corpus(dir.path()), (std::vector<std::string>{dir.file("art"), dir.file("zen")}));

  TempDir empty;
  expect_error([&] { find_default_corpus(empty.path()); }, ErrorKind::data,
               empty.path() + ": no fortune text files found; install them with `apt-get install fortunes`");
  expect_error([&] { find_default_corpus(dir.file("missing")); }, ErrorKind::data, "apt-get install fortunes");
}

}  // namespace
}  // namespace sy::test
