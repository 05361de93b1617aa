// Error message formatting shared by every check macro.
#include "core/check.h"

#include <atomic>
#include <cstring>

namespace sy {
namespace {
std::atomic<int> g_rank{0};

const char* short_path(const char* file) {
  // Keep the path from the project root: "core/ops/rmsnorm.cpp", not the build machine's prefix.
  // The leftmost layer folder wins, so tests/core/x.cpp stays tests/core/x.cpp.
  const char* best = nullptr;
  for (const char* layer : {"/core/", "/parallel/", "/moe/", "/train/", "/bench/", "/tests/"}) {
    const char* p = std::strstr(file, layer);
    if (p && (!best || p < best)) best = p;
  }
  return best ? best + 1 : file;
}
}  // namespace

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_argument: return "invalid argument";
    case ErrorKind::config: return "config error";
    case ErrorKind::data: return "data error";
    case ErrorKind::io: return "I/O error";
    case ErrorKind::checkpoint: return "checkpoint error";
    case ErrorKind::cuda: return "CUDA error";
    case ErrorKind::cublas: return "cuBLAS error";
    case ErrorKind::nccl: return "NCCL error";
    case ErrorKind::mpi: return "MPI error";
    case ErrorKind::internal: return "internal error";
  }
  return "error";
}

void set_error_rank(int rank) { g_rank.store(rank); }
int error_rank() { return g_rank.load(); }

namespace detail {

Failure::Failure(ErrorKind kind, const char* file, int line, const char* what) : kind_(kind) {
  stream_ << "rank " << error_rank() << ": ";
  if (file) stream_ << short_path(file) << ":" << line << ": ";
  if (what) stream_ << what;
}

void Raise::operator=(const Failure& failure) const { throw Error(failure.kind(), failure.message()); }

}  // namespace detail
}  // namespace sy
