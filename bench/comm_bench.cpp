// Collective bandwidth across the job's ranks. Rows follow nccl-tests: size is the bytes each
// rank contributes, algbw = size / time, and busbw scales algbw by the share of data that
// must cross links (all-reduce 2(n-1)/n, all-to-all (n-1)/n), so it compares with link speed.
// Time is the largest median over ranks. The last two columns move the all-to-all's bytes into
// expert-major order the two ways the MoE dispatch can: Communicator::exchange with each peer's
// share in kBlocks blocks, and one all-to-all into a staging buffer followed by the regroup pass
// (rows of kRowFloats floats, the 1536 bytes of a d_model 768 bf16 row). Their busbw counts the
// same bytes as the all-to-all's, so the ratios are the price of expert-major order.
#include "bench/comm_bench.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench/timing.h"
#include "core/ops.h"
#include "core/storage.h"
#include "moe/permute.h"
#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace sy::bench {
namespace {

constexpr int kBlocks = 4;        // blocks per peer in the exchange columns: 4 local experts
constexpr int kRowFloats = 384;   // row width of the regroup column

struct Options {
  Device device = Device::cpu;
  std::int64_t min_bytes = 1 << 10;
  std::int64_t max_bytes = std::int64_t(1) << 30;
  int repeats = 20;
  bool all_reduce = true;
  bool all_to_all = true;
  bool json = false;  // also one JSON line per size (for launch/scaling.py)
};

std::int64_t parse_bytes(const std::string& text) {
  char* end = nullptr;
  const double number = std::strtod(text.c_str(), &end);
  std::string unit = end ? std::string(end) : std::string();
  double scale = 1;
  if (unit == "K" || unit == "KiB") scale = 1024.0;
  else if (unit == "M" || unit == "MiB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") scale = 1024.0 * 1024 * 1024;
  else SY_CHECK(unit.empty()) << "bench comm: size '" << text << "' must be a number with an optional K, M or G";
  SY_CHECK(number > 0) << "bench comm: size '" << text << "' must be positive";
  return std::int64_t(number * scale);
}

std::string size_text(std::int64_t bytes) {
  char text[32];
  if (bytes >= (std::int64_t(1) << 30)) std::snprintf(text, sizeof text, "%lld GiB", (long long)(bytes >> 30));
  else if (bytes >= (1 << 20)) std::snprintf(text, sizeof text, "%lld MiB", (long long)(bytes >> 20));
  else std::snprintf(text, sizeof text, "%lld KiB", (long long)(bytes >> 10));
  return text;
}

void print_usage() {
  std::printf(
      "usage: mpirun -np N switchyard bench comm [--device cpu|cuda] [--min-bytes 1K] [--max-bytes 1G]\n"
      "                                          [--repeats N] [--op all_reduce|all_to_all|both] [--json]\n"
      "  Sizes double from min to max. Default device: cuda when every rank has a GPU, else cpu. --json adds\n"
      "  one JSON line per size.\n");
}

}  // namespace

int run_comm_bench(const std::vector<std::string>& args) {
  int argc = 0;
  char** argv = nullptr;
  MpiRuntime runtime(&argc, &argv);
  Options opt;
  opt.device = runtime.has_gpu_per_rank() ? Device::cuda : Device::cpu;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--help" || a == "-h") {
      if (runtime.world_rank() == 0) print_usage();
      return 0;
    } else if (a == "--device" && has_value) {
      const std::string& d = args[++i];
      SY_CHECK(d == "cpu" || d == "cuda") << "bench comm: --device must be cpu or cuda, got '" << d << "'";
      opt.device = d == "cuda" ? Device::cuda : Device::cpu;
    } else if (a == "--min-bytes" && has_value) {
      opt.min_bytes = parse_bytes(args[++i]);
    } else if (a == "--max-bytes" && has_value) {
      opt.max_bytes = parse_bytes(args[++i]);
    } else if (a == "--repeats" && has_value) {
      opt.repeats = std::atoi(args[++i].c_str());
      SY_CHECK(opt.repeats >= 1) << "bench comm: --repeats must be a positive integer, got '" << args[i] << "'";
    } else if (a == "--json") {
      opt.json = true;
    } else if (a == "--op" && has_value) {
      const std::string& op = args[++i];
      SY_CHECK(op == "all_reduce" || op == "all_to_all" || op == "both")
          << "bench comm: --op must be all_reduce, all_to_all or both, got '" << op << "'";
      opt.all_reduce = op != "all_to_all";
      opt.all_to_all = op != "all_reduce";
    } else {
      SY_FAIL() << "bench comm: unknown argument '" << a << "' (see switchyard bench comm --help)";
    }
  }
  SY_CHECK(opt.device == Device::cpu || runtime.has_gpu_per_rank())
      << "bench comm: --device cuda needs a GPU for every rank of the node";
  SY_CHECK(opt.min_bytes <= opt.max_bytes) << "bench comm: --min-bytes is larger than --max-bytes";

  std::unique_ptr<Communicator> world = make_world(opt.device);
  const int n = world->size();
  const bool gpu = opt.device == Device::cuda;
  Stream stream_owner = gpu ? Stream::create() : Stream();
  StreamRef stream = stream_owner.ref();
  // One pair of buffers at the largest size, viewed smaller for each row.
  const std::int64_t max_floats = (opt.max_bytes + 3) / 4 + n;
  OwnedTensor send({max_floats}, DType::f32, opt.device), recv({max_floats}, DType::f32, opt.device);
  fill_uniform(send, RngKey{1, std::uint32_t(RngPurpose::test), std::uint32_t(world->rank())}, -1.0f, 1.0f, 0, stream);
  fill_uniform(recv, RngKey{2, std::uint32_t(RngPurpose::test), std::uint32_t(world->rank())}, -1.0f, 1.0f, 0, stream);
  synchronize(stream);

  if (world->rank() == 0) {
    std::printf("switchyard bench comm: %d ranks, %s, median of %d repeats\n", n,
                gpu ? ("NCCL on " + cuda_device_description(0)).c_str() : "MPI on CPU", opt.repeats);
    std::printf("%-12s %10s | %-34s | %-34s | %-34s | %-34s\n", "", "", "all_reduce (sum, f32)",
                "all_to_all (equal counts)", "exchange (4 blocks per peer)", "all_to_all + regroup (4 per peer)");
    std::printf("%-12s %10s", "size", "count");
    for (int i = 0; i < 4; ++i) std::printf(" | %10s %11s %11s", "time (us)", "algbw GB/s", "busbw GB/s");
    std::printf("\n");
  }
  for (std::int64_t bytes = opt.min_bytes; bytes <= opt.max_bytes; bytes *= 2) {
    const std::int64_t count = bytes / 4 / (n * kBlocks) * (n * kBlocks);  // equal all-to-all chunks and blocks
    if (count == 0) continue;
    const Tensor data = send.view().slice_rows(0, count);
    const Tensor out = recv.view().slice_rows(0, count);
    const std::vector<std::int64_t> counts(std::size_t(n), count / n);
    const int repeats = bytes >= (std::int64_t(64) << 20) ? std::max(5, opt.repeats / 4) : opt.repeats;
    // Exchange blocks: block b of peer p's share goes from row (p kBlocks + b) r of send to row
    // (b n + p) r of the receiver's out, as dispatch places expert b's rows from source p.
    const std::int64_t r = count / (n * kBlocks);
    std::vector<RowBlock> sends, recvs;
    for (int p = 0; p < n; ++p)
      for (int b = 0; b < kBlocks; ++b) {
        sends.push_back({p, (p * kBlocks + b) * r, r});
        recvs.push_back({p, (b * n + p) * r, r});
      }
    // Regroup: the all-to-all lands source-major in `out`, then kBlocks blocks of `rows` rows per
    // peer move to expert-major order back into `send`, which the all-to-all has finished reading
    // (same stream; the values only need to stay finite, as after the all-reduces).
    // Whole rows only: up to a row per block less than the all-to-all moved (under 0.1% from 8 MiB).
    const std::int64_t rows = count / (std::int64_t(n) * kBlocks * kRowFloats);
    const std::int64_t regroup_floats = rows * n * kBlocks * kRowFloats;
    Tensor staged, grouped;
    if (rows > 0) {
      staged = out.slice_rows(0, regroup_floats).reshape({regroup_floats / kRowFloats, kRowFloats});
      grouped = send.view().slice_rows(0, regroup_floats).reshape(staged.shape());
    }
    double times_us[4] = {0, 0, 0, 0};
    for (int which = 0; which < 4; ++which) {
      if ((which == 0 && !opt.all_reduce) || (which > 0 && !opt.all_to_all) || (which == 3 && rows == 0)) continue;
      world->barrier(stream);
      auto body = [&] {
        if (which == 0) {
          world->all_reduce(data, ReduceOp::sum, stream);
        } else if (which == 1) {
          world->all_to_all(data, counts, out, counts, stream);
        } else if (which == 2) {
          world->exchange(data, sends, out, recvs, stream);
        } else {
          world->all_to_all(data, counts, out, counts, stream);
          moe_regroup(staged, RegroupBlocks::uniform(n, kBlocks, rows), grouped, true, stream);
        }
      };
      double median_ms = time_repeated(body, gpu, stream, 3, repeats).median_ms;
      // The slowest rank sets the collective's time.
      OwnedTensor slowest({1}, DType::f64, Device::cpu);
      slowest.view().ptr<double>()[0] = median_ms;
      SY_MPI(MPI_Allreduce(MPI_IN_PLACE, slowest.view().data(), 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
      times_us[which] = slowest.view().ptr<double>()[0] * 1e3;
    }
    if (world->rank() == 0) {
      const double size_bytes = double(count) * 4;
      auto row = [&](double us, double factor) {
        if (us == 0) return std::printf(" | %10s %11s %11s", "-", "-", "-");
        const double algbw = size_bytes / us * 1e-3;
        return std::printf(" | %10.1f %11.2f %11.2f", us, algbw, algbw * factor);
      };
      std::printf("%-12s %10lld", size_text(bytes).c_str(), (long long)count);
      row(times_us[0], 2.0 * (n - 1) / n);
      row(times_us[1], double(n - 1) / n);
      row(times_us[2], double(n - 1) / n);
      row(times_us[3], double(n - 1) / n);
      std::printf("\n");
      if (opt.json) {
        auto busbw = [&](double us, double factor) { return us > 0 ? size_bytes / us * 1e-3 * factor : 0.0; };
        std::printf("{\"bench\": \"comm\", \"ranks\": %d, \"bytes\": %.0f, \"all_reduce_busbw_gbs\": %.2f, "
                    "\"all_to_all_busbw_gbs\": %.2f, \"exchange_busbw_gbs\": %.2f, \"regroup_busbw_gbs\": %.2f}\n",
                    n, size_bytes, busbw(times_us[0], 2.0 * (n - 1) / n), busbw(times_us[1], double(n - 1) / n),
                    busbw(times_us[2], double(n - 1) / n), busbw(times_us[3], double(n - 1) / n));
      }
    }
  }
  return 0;
}

}  // namespace sy::bench
