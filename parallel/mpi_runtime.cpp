// MPI start-up and shutdown, node-local ranks, GPU selection and the job-wide abort.
#include "parallel/mpi_runtime.h"

#include <cstdlib>
#include <exception>

#include "core/stream.h"

namespace sy {

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, std::size_t(length));
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    // Funneled: only the main thread calls MPI; NCCL progress runs on its own threads.
    SY_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  }
  SY_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  SY_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  SY_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  set_error_rank(world_rank_);

  MPI_Comm node = MPI_COMM_NULL;
  SY_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node));
  SY_MPI(MPI_Comm_rank(node, &local_rank_));
  SY_MPI(MPI_Comm_size(node, &local_size_));
  SY_MPI(MPI_Comm_free(&node));

  const int gpus = cuda_device_count();
  if (gpus > 0) set_cuda_device(local_rank_ % gpus);
  // A GPU per rank on every node, or NCCL would put two ranks on one device.
  int mine = gpus >= local_size_ ? 1 : 0, all = 0;
  SY_MPI(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  gpu_per_rank_ = all == 1;
}

MpiRuntime::~MpiRuntime() {
  // Unwinding from an error: MPI_Finalize would wait for ranks that may never get there;
  // main() ends the job with MPI_Abort instead.
  if (std::uncaught_exceptions() > 0) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiRuntime::abort(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

}  // namespace sy
