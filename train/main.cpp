// switchyard command line: subcommands dispatch here; every error becomes one clear line
// naming the rank, and a non-zero exit.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "bench/comm_bench.h"
#include "bench/moe_bench.h"
#include "bench/op_bench.h"
#include "core/check.h"
#include "core/selfcheck.h"
#include "core/stream.h"
#include "parallel/mpi_runtime.h"

namespace {

void print_usage() {
  std::printf(
      "switchyard: train Switch-style sparse Mixture-of-Experts language models\n\n"
      "usage: switchyard <command> [options]\n\n"
      "commands:\n"
      "  selfcheck [--seed N]   run every op forward and backward on random inputs against the\n"
      "                         float64 CPU reference (CPU f32, and CUDA f32/bf16 with a GPU)\n"
      "  bench ops [...]        GEMM, attention and copy throughput (switchyard bench ops --help)\n"
      "  bench comm [...]       all-reduce and all-to-all bandwidth under mpirun (bench comm --help)\n"
      "  bench moe [...]        one MoE layer forward+backward, time split by phase (bench moe --help)\n"
      "  --help                 this text\n");
}

int run_selfcheck_command(const std::vector<std::string>& args) {
  std::uint64_t seed = 1234;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::printf("usage: switchyard selfcheck [--seed N]\n"
                  "  Compares every op (forward and backward) with the float64 CPU reference on fresh\n"
                  "  random inputs; exits 1 if any op is outside its tolerance.\n");
      return 0;
    }
    if (args[i] == "--seed" && i + 1 < args.size()) {
      seed = std::stoull(args[++i]);
    } else {
      SY_FAIL() << "selfcheck: unknown argument '" << args[i] << "' (see switchyard selfcheck --help)";
    }
  }
  const int gpus = sy::cuda_device_count();
  std::printf("switchyard selfcheck: %s\n", gpus > 0 ? sy::cuda_device_description(0).c_str()
                                                      : "no GPU found, checking the CPU backend only");
  std::printf("%-24s %-6s %-5s %12s %10s  %s\n", "op (forward+backward)", "device", "dtype", "rel. error", "tolerance",
              "result");
  int failed = 0;
  const auto results = sy::run_selfcheck(seed);
  for (const auto& r : results) {
    std::printf("%-24s %-6s %-5s %12.3e %10.0e  %s\n", r.op.c_str(), sy::device_name(r.device),
                sy::dtype_name(r.dtype), r.max_relative_error, r.tolerance, r.passed ? "ok" : "FAIL");
    failed += r.passed ? 0 : 1;
  }
  std::printf("%zu passed, %d failed\n", results.size() - std::size_t(failed), failed);
  return failed == 0 ? 0 : 1;
}

int run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_usage();
    return args.empty() ? 2 : 0;
  }
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "selfcheck") return run_selfcheck_command(rest);
  if (command == "bench") {
    SY_CHECK(!rest.empty()) << "bench: name a benchmark: ops, comm or moe (see switchyard --help)";
    if (rest[0] == "ops") return sy::bench::run_op_bench({rest.begin() + 1, rest.end()});
    if (rest[0] == "comm") return sy::bench::run_comm_bench({rest.begin() + 1, rest.end()});
    if (rest[0] == "moe") return sy::bench::run_moe_bench({rest.begin() + 1, rest.end()});
    SY_FAIL() << "bench: unknown benchmark '" << rest[0] << "'; available: ops, comm, moe";
  }
  SY_FAIL() << "unknown command '" << command << "' (see switchyard --help)";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const sy::Error& e) {
    std::fprintf(stderr, "switchyard: %s: %s\n", sy::error_kind_name(e.kind()), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "switchyard: rank %d: %s\n", sy::error_rank(), e.what());
  }
  // Ranks still inside a collective would wait forever for this one: end the whole job.
  std::fflush(stderr);
  sy::MpiRuntime::abort(1);
}
