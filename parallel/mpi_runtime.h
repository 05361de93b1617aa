// MPI process lifetime: initialisation, world and node-local ranks, GPU selection, and the
// abort path every fatal error takes so a job never hangs on a dead rank.
#pragma once

#include <mpi.h>

#include "core/check.h"

// SY_MPI(call): check an MPI return code (the world error handler is MPI_ERRORS_RETURN), raising
// sy::Error with the call, file, line, rank and MPI's own error text.
#define SY_MPI(call)                                                                                    \
  do {                                                                                                  \
    int sy_mpi_status_ = (call);                                                                        \
    if (sy_mpi_status_ != MPI_SUCCESS)                                                                  \
      SY_FAIL_AS(::sy::ErrorKind::mpi) << #call << " failed: " << ::sy::mpi_error_text(sy_mpi_status_); \
  } while (0)

namespace sy {

std::string mpi_error_text(int code);

class Communicator;
// The MPI communicator behind an MPI-backed Communicator (for MPI-IO and other host
// collectives over the same ranks); fails for other backends.
MPI_Comm mpi_handle(const Communicator& comm);

class MpiRuntime {
 public:
  // Initialises MPI (thread level funneled), sets MPI_ERRORS_RETURN on the world so failures
  // become exceptions, records the error rank, and, when GPUs are present, selects GPU
  // local_rank % device_count.
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  int local_size() const { return local_size_; }
  // Whether every process of this node got a GPU of its own.
  bool has_gpu_per_rank() const { return gpu_per_rank_; }

  // Ends the whole job: prints nothing itself; callers print their one line first.
  [[noreturn]] static void abort(int exit_code);

 private:
  int world_rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  bool gpu_per_rank_ = false;
};

}  // namespace sy
