// `switchyard bench ops`: GEMM, attention and copy throughput against the device's ceilings.
#pragma once

#include <string>
#include <vector>

namespace sy::bench {

// Runs the op micro-benchmarks and prints one table per family. Returns a process exit code.
int run_op_bench(const std::vector<std::string>& args);

}  // namespace sy::bench
