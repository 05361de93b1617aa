// `switchyard bench moe`: one MoE layer forward + backward, with the time split into router,
// permute, all-to-all, expert GEMMs and combine, and the expert GEMMs' TFLOP/s against the
// dense GEMM ceiling measured in the same run.
#pragma once

#include <string>
#include <vector>

namespace sy::bench {

// Collective over the job's ranks (run under mpirun for ep > 1). Returns an exit code.
int run_moe_bench(const std::vector<std::string>& args);

}  // namespace sy::bench
