// Token shards: the llm.c layout round-trips, and every malformed file is one clear error.
#include "train/token_shard.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "tests/testing.h"
#include "tests/train/temp_dir.h"

namespace sy::test {
namespace {

std::vector<std::uint16_t> sample_tokens(std::size_t count) {
  std::vector<std::uint16_t> tokens(count);
  for (std::size_t i = 0; i < count; ++i) tokens[i] = std::uint16_t((i * 7919 + 13) % 65536);
  tokens.front() = 0;
  tokens.back() = 65535;  // the full uint16 range survives
  return tokens;
}

// Rewrites header int `index` of a shard in place.
void patch_header(const std::string& path, int index, std::int32_t value) {
  std::string bytes = read_bytes(path);
  std::memcpy(bytes.data() + index * sizeof(std::int32_t), &value, sizeof(value));
  write_bytes(path, bytes);
}

TEST(TokenShard, RoundTripKeepsEveryTokenAndTheHeaderLayout) {
  TempDir dir;
  const std::string path = dir.file("train_000000.bin");
  const auto tokens = sample_tokens(1000);
  write_token_shard(path, tokens);

  TokenShard shard(path);
  EXPECT_EQ(shard.path(), path);
  ASSERT_EQ(shard.token_count(), 1000);
  EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), shard.tokens().begin()));

  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), kTokenShardHeaderBytes + 2 * 1000);
  std::vector<std::int32_t> header(kTokenShardHeaderInts);
  std::memcpy(header.data(), bytes.data(), kTokenShardHeaderBytes);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 1000);
  for (std::size_t i = 3; i < header.size(); ++i) EXPECT_EQ(header[i], 0) << "header[" << i << "]";
}

TEST(TokenShard, EmptyShardIsValid) {
  TempDir dir;
  const std::string path = dir.file("empty.bin");
  write_token_shard(path, {});
  TokenShard shard(path);
  EXPECT_EQ(shard.token_count(), 0);
  EXPECT_TRUE(shard.tokens().empty());
}

TEST(TokenShard, MovedShardKeepsItsMapping) {
  TempDir dir;
  const std::string path = dir.file("a.bin");
  const auto tokens = sample_tokens(64);
  write_token_shard(path, tokens);
  TokenShard first(path);
  TokenShard second(std::move(first));
  EXPECT_EQ(first.token_count(), 0);
  ASSERT_EQ(second.token_count(), 64);
  EXPECT_EQ(second.tokens()[5], tokens[5]);
  TokenShard third(path);
  third = std::move(second);
  EXPECT_EQ(third.tokens()[63], 65535);
}

TEST(TokenShard, WriterReplacesTheFileAndLeavesNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("train_000000.bin");
  write_token_shard(path, sample_tokens(100));
  write_token_shard(path, sample_tokens(10));
  EXPECT_EQ(TokenShard(path).token_count(), 10);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) names.push_back(entry.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"train_000000.bin"});
}

TEST(TokenShard, WriterIntoAMissingDirectoryIsAnIoError) {
  TempDir dir;
  const std::string path = dir.file("no_such_dir/x.bin");
  expect_error([&] { write_token_shard(path, sample_tokens(4)); }, ErrorKind::io,
               path + ".tmp." + std::to_string(::getpid()) + ": cannot create token shard: No such file or directory");
}

TEST(TokenShard, MissingFileNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("missing.bin");
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": cannot open token shard: No such file or directory");
}

TEST(TokenShard, FileShorterThanTheHeaderIsRejected) {
  TempDir dir;
  const std::string path = dir.file("short.bin");
  write_bytes(path, std::string(100, '\0'));
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": file is 100 bytes, shorter than the 1024-byte token shard header");
}

TEST(TokenShard, WrongMagicSaysItIsNotAShard) {
  TempDir dir;
  const std::string path = dir.file("corrupt.bin");
  write_token_shard(path, sample_tokens(16));
  patch_header(path, 0, 123);
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": not a token shard (magic 123, expected 20240520)");
}

TEST(TokenShard, UnsupportedVersionIsRejected) {
  TempDir dir;
  const std::string path = dir.file("v2.bin");
  write_token_shard(path, sample_tokens(16));
  patch_header(path, 1, 2);
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": unsupported token shard version 2 (expected 1)");
}

TEST(TokenShard, CountDisagreeingWithTheFileSizeIsRejected) {
  TempDir dir;
  const std::string path = dir.file("truncated.bin");
  write_token_shard(path, sample_tokens(1000));
  std::filesystem::resize_file(path, kTokenShardHeaderBytes + 2 * 998);
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": header says 1000 tokens but the file holds 998");

  std::filesystem::resize_file(path, kTokenShardHeaderBytes + 2 * 998 + 1);
  expect_error([&] { TokenShard shard(path); }, ErrorKind::data,
               path + ": header says 1000 tokens but the file holds 1997 bytes of tokens, not a whole number");
}

TEST(TokenShard, DirectoryIsNotAShard) {
  TempDir dir;
  expect_error([&] { TokenShard shard(dir.path()); }, ErrorKind::data, dir.path() + ": not a regular file");
}

}  // namespace
}  // namespace sy::test
