// `switchyard bench comm`: all-reduce and all-to-all from 1 KiB to 1 GiB across the ranks of
// an mpirun job, printed as nccl-tests does (time, algorithm and bus bandwidth).
#pragma once

#include <string>
#include <vector>

namespace sy::bench {

// Collective over MPI_COMM_WORLD: every rank calls it; rank 0 prints. Returns an exit code.
int run_comm_bench(const std::vector<std::string>& args);

}  // namespace sy::bench
