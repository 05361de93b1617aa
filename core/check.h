// Error reporting for the whole project: SY_CHECK(cond) << "what was expected, what was seen"
// raises a typed sy::Error whose message names the rank, file and line. Library-call checks
// (SY_CUDA, SY_CUBLAS in core/cuda_check.h; SY_NCCL, SY_MPI in parallel/) build on it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sy {

enum class ErrorKind { invalid_argument, config, data, io, checkpoint, cuda, cublas, nccl, mpi, internal };
const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// The rank printed in every error message; set once by the process that knows it (MPI init).
void set_error_rank(int rank);
int error_rank();

namespace detail {

// Collects the streamed message; Raise turns it into an exception at the end of the statement.
class Failure {
 public:
  Failure(ErrorKind kind, const char* file, int line, const char* what);
  template <class T>
  Failure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }
  ErrorKind kind() const { return kind_; }
  std::string message() const { return stream_.str(); }

 private:
  ErrorKind kind_;
  std::ostringstream stream_;
};

struct Raise {
  [[noreturn]] void operator=(const Failure& failure) const;
};

}  // namespace detail
}  // namespace sy

// Prefix: "rank R: file:line: ". The condition text is not included: the message should say
// what was expected in the user's terms.
#define SY_FAIL_AS(kind) ::sy::detail::Raise{} = ::sy::detail::Failure((kind), __FILE__, __LINE__, nullptr)
#define SY_CHECK_AS(kind, cond) \
  if (cond) {                   \
  } else                        \
    SY_FAIL_AS(kind)
#define SY_CHECK(cond) SY_CHECK_AS(::sy::ErrorKind::invalid_argument, cond)

// Errors in what a user gave us (config, data files, command line): "rank R: <message>", no
// source location, since the message itself names the key or file and what was expected.
#define SY_INPUT_FAIL(kind) ::sy::detail::Raise{} = ::sy::detail::Failure((kind), nullptr, 0, nullptr)
#define SY_INPUT_CHECK(kind, cond) \
  if (cond) {                      \
  } else                           \
    SY_INPUT_FAIL(kind)
#define SY_FAIL() SY_FAIL_AS(::sy::ErrorKind::invalid_argument)
