// Token shards in the llm.c `.bin` layout: a 256 x int32 header (magic, version, token count,
// the rest zero) followed by the tokens as uint16. Readers map a shard read-only, so a dataset
// of many shards costs address space, not memory; the writer never leaves a partial shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace sy {

inline constexpr std::int32_t kTokenShardMagic = 20240520;
inline constexpr std::int32_t kTokenShardVersion = 1;
inline constexpr std::size_t kTokenShardHeaderInts = 256;
inline constexpr std::size_t kTokenShardHeaderBytes = kTokenShardHeaderInts * sizeof(std::int32_t);

// One shard, memory-mapped read-only for its lifetime. Opening validates the header against the
// file size; every problem is one sy::Error (ErrorKind::data) naming the file.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  std::int64_t token_count() const { return token_count_; }
  std::span<const std::uint16_t> tokens() const { return {tokens_, std::size_t(token_count_)}; }

 private:
  void release();

  std::string path_;
  int fd_ = -1;
  void* mapping_ = nullptr;
  std::size_t mapping_bytes_ = 0;
  const std::uint16_t* tokens_ = nullptr;
  std::int64_t token_count_ = 0;
};

// Writes a shard to a temporary name beside `path`, fsyncs it and renames it into place (then
// fsyncs the directory), so a crash leaves either the old file or the complete new one.
// Failures are ErrorKind::io naming the file.
void write_token_shard(const std::string& path, std::span<const std::uint16_t> tokens);

}  // namespace sy
