// Token shard mapping and atomic writing (layout in token_shard.h).
#include "train/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/check.h"

namespace sy {
namespace {

// The header and tokens are stored little-endian, as llm.c writes them; we map them as is.
static_assert(std::endian::native == std::endian::little, "token shards are read in place on little-endian hosts");

// Closes the descriptor on every exit path of the writer.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and reports close's result: on some file systems a failed write surfaces here.
  int close() { return ::close(std::exchange(fd_, -1)); }

 private:
  int fd_;
};

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const void* data, std::size_t bytes, const std::string& path) {
  const char* cursor = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t written = ::write(fd, cursor, bytes);
    if (written < 0 && errno == EINTR) continue;
    SY_CHECK_AS(ErrorKind::io, written > 0) << path << ": cannot write token shard: " << errno_text();
    cursor += written;
    bytes -= std::size_t(written);
  }
}

std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

TokenShard::TokenShard(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SY_CHECK_AS(ErrorKind::data, fd_ >= 0) << path << ": cannot open token shard: " << errno_text();
  try {
    struct stat info {};
    SY_CHECK_AS(ErrorKind::data, ::fstat(fd_, &info) == 0) << path << ": cannot stat token shard: " << errno_text();
    SY_CHECK_AS(ErrorKind::data, S_ISREG(info.st_mode)) << path << ": not a regular file";
    const auto file_bytes = std::size_t(info.st_size);
    SY_CHECK_AS(ErrorKind::data, file_bytes >= kTokenShardHeaderBytes)
        << path << ": file is " << file_bytes << " bytes, shorter than the " << kTokenShardHeaderBytes
        << "-byte token shard header";

    mapping_ = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd_, 0);
    SY_CHECK_AS(ErrorKind::data, mapping_ != MAP_FAILED) << path << ": cannot map token shard: " << errno_text();
    mapping_bytes_ = file_bytes;

    const auto* header = static_cast<const std::int32_t*>(mapping_);
    SY_CHECK_AS(ErrorKind::data, header[0] == kTokenShardMagic)
        << path << ": not a token shard (magic " << header[0] << ", expected " << kTokenShardMagic << ")";
    SY_CHECK_AS(ErrorKind::data, header[1] == kTokenShardVersion)
        << path << ": unsupported token shard version " << header[1] << " (expected " << kTokenShardVersion << ")";
    const std::size_t data_bytes = file_bytes - kTokenShardHeaderBytes;
    SY_CHECK_AS(ErrorKind::data, data_bytes % sizeof(std::uint16_t) == 0)
        << path << ": header says " << header[2] << " tokens but the file holds " << data_bytes
        << " bytes of tokens, not a whole number of uint16 tokens";
    const auto file_tokens = std::int64_t(data_bytes / sizeof(std::uint16_t));
    SY_CHECK_AS(ErrorKind::data, header[2] == file_tokens)
        << path << ": header says " << header[2] << " tokens but the file holds " << file_tokens;

    tokens_ = reinterpret_cast<const std::uint16_t*>(static_cast<const char*>(mapping_) + kTokenShardHeaderBytes);
    token_count_ = file_tokens;
  } catch (...) {
    release();
    throw;
  }
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_bytes_(std::exchange(other.mapping_bytes_, 0)),
      tokens_(std::exchange(other.tokens_, nullptr)),
      token_count_(std::exchange(other.token_count_, 0)) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    token_count_ = std::exchange(other.token_count_, 0);
  }
  return *this;
}

void TokenShard::release() {
  if (mapping_ != nullptr && mapping_ != MAP_FAILED) ::munmap(mapping_, mapping_bytes_);
  if (fd_ >= 0) ::close(fd_);
  mapping_ = nullptr;
  mapping_bytes_ = 0;
  fd_ = -1;
  tokens_ = nullptr;
  token_count_ = 0;
}

void write_token_shard(const std::string& path, std::span<const std::uint16_t> tokens) {
  SY_CHECK(tokens.size() <= std::size_t(std::numeric_limits<std::int32_t>::max()))
      << path << ": a token shard holds at most " << std::numeric_limits<std::int32_t>::max() << " tokens, got "
      << tokens.size();
  std::array<std::int32_t, kTokenShardHeaderInts> header{};
  header[0] = kTokenShardMagic;
  header[1] = kTokenShardVersion;
  header[2] = std::int32_t(tokens.size());

  // The pid keeps two processes writing the same shard from sharing a temporary file.
  const std::string temporary = path + ".tmp." + std::to_string(::getpid());
  FileDescriptor file(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  SY_CHECK_AS(ErrorKind::io, file.get() >= 0) << temporary << ": cannot create token shard: " << errno_text();
  try {
    write_all(file.get(), header.data(), kTokenShardHeaderBytes, temporary);
    write_all(file.get(), tokens.data(), tokens.size_bytes(), temporary);
    SY_CHECK_AS(ErrorKind::io, ::fsync(file.get()) == 0) << temporary << ": cannot sync token shard: " << errno_text();
    SY_CHECK_AS(ErrorKind::io, file.close() == 0) << temporary << ": cannot close token shard: " << errno_text();
    SY_CHECK_AS(ErrorKind::io, ::rename(temporary.c_str(), path.c_str()) == 0)
        << path << ": cannot rename " << temporary << " into place: " << errno_text();
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
  // Without syncing the directory the rename itself may be lost in a crash.
  const std::string directory = parent_directory(path);
  FileDescriptor directory_fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  SY_CHECK_AS(ErrorKind::io, directory_fd.get() >= 0) << directory << ": cannot open directory: " << errno_text();
  SY_CHECK_AS(ErrorKind::io, ::fsync(directory_fd.get()) == 0)
      << directory << ": cannot sync directory: " << errno_text();
}

}  // namespace sy
