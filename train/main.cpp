// switchyard command line: subcommands dispatch here; every error becomes one clear line
// naming the rank, and a non-zero exit.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
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
#include "train/config.h"
#include "train/prepare.h"
#include "train/trainer.h"

namespace {

void print_usage() {
  std::printf(
      "switchyard: train Switch-style sparse Mixture-of-Experts language models\n\n"
      "usage: switchyard <command> [options]\n\n"
      "commands:\n"
      "  train CONFIG [--set key.path=value]...     train a model (launch with mpirun or launch/train.sh)\n"
      "  validate CONFIG [--set key.path=value]...  check a config; print parameters, FLOPs, memory and layout\n"
      "                         (--world-size N: the layout for N ranks; default: the ranks of this job)\n"
      "  prepare --out DIR [--seq-len T] [--val-fraction F] [--shard-tokens N] (--fortunes | FILE...)\n"
      "                         text files to byte-level token shards (vocab 256) with a train/val split\n"
      "  config-reference       every config key with its type, default and meaning (Markdown)\n"
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

// CONFIG [--set key=value]... [extra flags handled by `extra`]
struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;
  int world_size = 0;
};

ConfigArgs parse_config_args(const char* command, const std::vector<std::string>& args) {
  ConfigArgs out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--set" && i + 1 < args.size()) {
      out.overrides.push_back(args[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      out.overrides.push_back(a.substr(6));
    } else if (a == "--world-size" && i + 1 < args.size()) {
      out.world_size = std::atoi(args[++i].c_str());
      SY_INPUT_CHECK(sy::ErrorKind::invalid_argument, out.world_size >= 1)
          << command << ": --world-size must be a positive integer, got '" << args[i] << "'";
    } else if (a.rfind("--", 0) == 0 || !out.path.empty()) {
      SY_INPUT_FAIL(sy::ErrorKind::invalid_argument) << command << ": unexpected argument '" << a
                                                     << "' (usage: switchyard " << command
                                                     << " CONFIG [--set key.path=value]...)";
    } else {
      out.path = a;
    }
  }
  SY_INPUT_CHECK(sy::ErrorKind::invalid_argument, !out.path.empty())
      << command << ": name a config file (usage: switchyard " << command << " CONFIG [--set key.path=value]...)";
  return out;
}

bool wants_help(const std::vector<std::string>& args) {
  return std::find(args.begin(), args.end(), "--help") != args.end() ||
         std::find(args.begin(), args.end(), "-h") != args.end();
}

int run_train_command(const std::vector<std::string>& args, int* argc, char*** argv) {
  if (wants_help(args)) {
    std::printf("usage: [mpirun -np N] switchyard train CONFIG [--set key.path=value]...\n"
                "  Trains from a YAML config (see switchyard config-reference); --set overrides any key.\n"
                "  Rank 0 prints one line per logging step and writes <run.out_dir>/metrics.jsonl.\n");
    return 0;
  }
  const ConfigArgs parsed = parse_config_args("train", args);
  sy::MpiRuntime runtime(argc, argv);
  const sy::Config config = sy::load_config(parsed.path, parsed.overrides);
  sy::train(config, runtime);
  return 0;
}

int run_validate_command(const std::vector<std::string>& args, int* argc, char*** argv) {
  if (wants_help(args)) {
    std::printf("usage: switchyard validate CONFIG [--set key.path=value]... [--world-size N]\n"
                "  Exits non-zero on a bad config; on a good one prints total and active parameters,\n"
                "  FLOPs per token, memory per rank and the rank layout.\n");
    return 0;
  }
  const ConfigArgs parsed = parse_config_args("validate", args);
  const sy::Config config = sy::load_config(parsed.path, parsed.overrides);
  int world_size = parsed.world_size;
  if (world_size == 0) {
    sy::MpiRuntime runtime(argc, argv);
    world_size = runtime.world_size();
    if (runtime.world_rank() != 0) return 0;
  }
  std::printf("%s: valid for %d rank(s)\n%s", parsed.path.c_str(), world_size, sy::describe_run(config, world_size).c_str());
  return 0;
}

int run_prepare_command(const std::vector<std::string>& args) {
  if (args.empty() || wants_help(args)) {
    std::printf("usage: switchyard prepare --out DIR [--seq-len T] [--val-fraction F] [--shard-tokens N] (--fortunes | FILE...)\n"
                "  Concatenates the text files (or the installed fortunes corpus, without its %% separator lines)\n"
                "  into byte-level shards DIR/train_NNNNNN.bin and DIR/val_000000.bin (llm.c format, vocab 256).\n");
    return args.empty() ? 2 : 0;
  }
  sy::PrepareOptions options;
  bool fortunes = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--out" && has_value) options.out_dir = args[++i];
    else if (a == "--seq-len" && has_value) options.seq_len = std::atoll(args[++i].c_str());
    else if (a == "--val-fraction" && has_value) options.val_fraction = std::atof(args[++i].c_str());
    else if (a == "--shard-tokens" && has_value) options.shard_tokens = std::atoll(args[++i].c_str());
    else if (a == "--fortunes") fortunes = true;
    else if (a.rfind("--", 0) == 0) SY_INPUT_FAIL(sy::ErrorKind::invalid_argument) << "prepare: unknown option '" << a << "'";
    else options.inputs.push_back(a);
  }
  SY_INPUT_CHECK(sy::ErrorKind::invalid_argument, !options.out_dir.empty()) << "prepare: --out DIR is required";
  if (fortunes) {
    const std::vector<std::string> corpus = sy::find_default_corpus();
    options.inputs.insert(options.inputs.end(), corpus.begin(), corpus.end());
    options.strip_fortune_separators = true;
  }
  std::printf("%s\n", sy::prepare(options).describe().c_str());
  return 0;
}

int run(const std::vector<std::string>& args, int* argc, char*** argv) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_usage();
    return args.empty() ? 2 : 0;
  }
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "selfcheck") return run_selfcheck_command(rest);
  if (command == "train") return run_train_command(rest, argc, argv);
  if (command == "validate") return run_validate_command(rest, argc, argv);
  if (command == "prepare") return run_prepare_command(rest);
  if (command == "config-reference") {
    std::printf("%s", sy::config_reference_markdown().c_str());
    return 0;
  }
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
    return run(std::vector<std::string>(argv + 1, argv + argc), &argc, &argv);
  } catch (const sy::Error& e) {
    std::fprintf(stderr, "switchyard: %s: %s\n", sy::error_kind_name(e.kind()), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "switchyard: rank %d: %s\n", sy::error_rank(), e.what());
  }
  // Ranks still inside a collective would wait forever for this one: end the whole job.
  std::fflush(stderr);
  sy::MpiRuntime::abort(1);
}
