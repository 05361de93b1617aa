// MoE layer benchmark. Every rank holds `tokens` tokens and E / ep experts; the layer runs
// forward and backward `repeats` times after warm-up, each run split into phases by event
// marks (moe/moe_layer.h), and rank 0 prints the per-phase means (the largest over ranks). With
// ep > 1 it measures the exchanges whole (K = 1: their bus bandwidth) and pipelined in K chunks
// (their exposed part) side by side.
#include "bench/moe_bench.h"

#include <cstdio>
#include <cstdlib>
#include <map>

#include "bench/timing.h"
#include "core/phase_timer.h"
#include "moe/moe_layer.h"
#include "parallel/mpi_runtime.h"

namespace sy::bench {
namespace {

struct Options {
  Device device = Device::cpu;
  std::int64_t tokens = 0;  // per rank; 0: 16384 on GPU, 512 on CPU
  std::int64_t d_model = 768, d_ff = 3072;
  int experts = 8, top_k = 1, ep = 0;  // ep 0: the world size
  double capacity_factor = 1.25;
  bool dropless = false;
  ExpertActivation activation = ExpertActivation::gelu;
  int repeats = 10;
  int chunks = 4;  // pipelined run beside the K = 1 run (ep > 1)
  bool json = false;  // also one JSON line of the figures (for launch/scaling.py)
};

void print_usage() {
  std::printf(
      "usage: mpirun -np N switchyard bench moe [--tokens N] [--d-model D] [--d-ff F] [--experts E]\n"
      "                                         [--top-k K] [--ep P] [--capacity-factor C | --dropless]\n"
      "                                         [--activation gelu|relu|swiglu] [--device cpu|cuda] [--repeats R]\n"
      "                                         [--chunks K] [--json]\n"
      "  Tokens are per rank. Defaults: 16384 tokens (512 on CPU), d_model 768, d_ff 3072, 8 experts, top-1,\n"
      "  ep = number of ranks, capacity factor 1.25, GELU, bf16 on GPU (f32 on CPU), K = 4. With ep > 1 the\n"
      "  layer runs with whole exchanges (K = 1) and pipelined in K chunks, side by side. --json adds one JSON\n"
      "  line of the figures.\n");
}

std::int64_t parse_int(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  SY_INPUT_CHECK(ErrorKind::invalid_argument, end && *end == '\0' && v > 0)
      << "bench moe: " << flag << " must be a positive integer, got '" << text << "'";
  return v;
}

Options parse(const std::vector<std::string>& args, bool gpu_per_rank) {
  Options o;
  o.device = gpu_per_rank ? Device::cuda : Device::cpu;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--dropless" || a == "--json") {
      (a == "--json" ? o.json : o.dropless) = true;
      continue;
    }
    SY_INPUT_CHECK(ErrorKind::invalid_argument, i + 1 < args.size() && a.rfind("--", 0) == 0)
        << "bench moe: unknown argument '" << a << "' (see switchyard bench moe --help)";
    const std::string& v = args[++i];
    if (a == "--tokens") o.tokens = parse_int(a, v);
    else if (a == "--d-model") o.d_model = parse_int(a, v);
    else if (a == "--d-ff") o.d_ff = parse_int(a, v);
    else if (a == "--experts") o.experts = int(parse_int(a, v));
    else if (a == "--top-k") o.top_k = int(parse_int(a, v));
    else if (a == "--ep") o.ep = int(parse_int(a, v));
    else if (a == "--repeats") o.repeats = int(parse_int(a, v));
    else if (a == "--chunks") o.chunks = int(parse_int(a, v));
    else if (a == "--capacity-factor") o.capacity_factor = std::atof(v.c_str());
    else if (a == "--device") {
      SY_INPUT_CHECK(ErrorKind::invalid_argument, v == "cpu" || v == "cuda")
          << "bench moe: --device must be cpu or cuda, got '" << v << "'";
      o.device = v == "cuda" ? Device::cuda : Device::cpu;
    } else if (a == "--activation") {
      SY_INPUT_CHECK(ErrorKind::invalid_argument, v == "gelu" || v == "relu" || v == "swiglu")
          << "bench moe: --activation must be gelu, relu or swiglu, got '" << v << "'";
      o.activation = v == "gelu"   ? ExpertActivation::gelu
                     : v == "relu" ? ExpertActivation::relu
                                   : ExpertActivation::swiglu;
    } else {
      SY_INPUT_FAIL(ErrorKind::invalid_argument)
          << "bench moe: unknown argument '" << a << "' (see switchyard bench moe --help)";
    }
  }
  if (o.tokens == 0) o.tokens = o.device == Device::cuda ? 16384 : 512;
  return o;
}

constexpr const char* kPhases[] = {"router", "permute", "all_to_all", "experts", "combine"};

std::string capacity_text(double factor) {
  char text[48];
  std::snprintf(text, sizeof text, "capacity factor %g", factor);
  return text;
}

}  // namespace

int run_moe_bench(const std::vector<std::string>& args) {
  int argc = 0;
  char** argv = nullptr;
  MpiRuntime runtime(&argc, &argv);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      if (runtime.world_rank() == 0) print_usage();
      return 0;
    }
  }
  Options o = parse(args, runtime.has_gpu_per_rank());
  SY_INPUT_CHECK(ErrorKind::invalid_argument, o.device == Device::cpu || runtime.has_gpu_per_rank())
      << "bench moe: --device cuda needs a GPU for every rank of the node";
  if (o.ep == 0) o.ep = runtime.world_size();
  SY_INPUT_CHECK(ErrorKind::config, runtime.world_size() % o.ep == 0)
      << "bench moe: --ep " << o.ep << " does not divide the number of ranks " << runtime.world_size();

  const bool gpu = o.device == Device::cuda;
  const DType dtype = gpu ? DType::bf16 : DType::f32;
  Stream stream_owner = gpu ? Stream::create() : Stream();
  const StreamRef stream = stream_owner.ref();
  std::unique_ptr<Communicator> world = make_world(o.device);
  std::unique_ptr<Communicator> ep = world->split(world->rank() / o.ep, world->rank() % o.ep, "ep");

  MoeLayerConfig config;
  config.router.experts = o.experts;
  config.router.top_k = o.top_k;
  config.router.noise = RouterNoise::jitter;
  config.router.capacity_factor = o.capacity_factor;
  config.router.drop_policy = o.dropless ? DropPolicy::dropless : DropPolicy::position;
  config.d_model = o.d_model;
  config.d_ff = o.d_ff;
  config.activation = o.activation;
  SY_INPUT_CHECK(ErrorKind::config, o.experts % o.ep == 0)
      << "bench moe: --experts " << o.experts << " is not divisible by --ep " << o.ep;
  const std::int64_t local = o.experts / o.ep;
  const std::int64_t f_in = o.activation == ExpertActivation::swiglu ? 2 * o.d_ff : o.d_ff;

  OwnedTensor w_router = random_input({o.d_model, o.experts}, DType::f32, o.device, 1, stream);
  OwnedTensor w_in = random_input({local, o.d_model, f_in}, dtype, o.device, 2, stream);
  OwnedTensor w_out = random_input({local, o.d_ff, o.d_model}, dtype, o.device, 3, stream);
  OwnedTensor dw_router({o.d_model, o.experts}, DType::f32, o.device);
  OwnedTensor dw_in({local, o.d_model, f_in}, DType::f32, o.device);
  OwnedTensor dw_out({local, o.d_ff, o.d_model}, DType::f32, o.device);
  const MoeWeights weights{w_router, Tensor(), {w_in, w_out}};
  const MoeGrads grads{dw_router, Tensor(), {dw_in, dw_out}};
  OwnedTensor x = random_input({o.tokens, o.d_model}, dtype, o.device, 10 + std::uint64_t(world->rank()), stream);
  OwnedTensor dout = random_input({o.tokens, o.d_model}, dtype, o.device, 20 + std::uint64_t(world->rank()), stream);
  OwnedTensor out({o.tokens, o.d_model}, dtype, o.device), dx({o.tokens, o.d_model}, dtype, o.device);
  // Activations of one forward + backward: routing, several copies of the token rows (send and
  // expert sides, both directions) and the expert activations.
  const std::size_t row_bytes = std::size_t(o.d_model) * dtype_size(dtype);
  const std::size_t rows = std::size_t(o.tokens) * std::size_t(o.top_k) * 2 + 4096;
  Arena arena(o.device, rows * (16 * row_bytes + 6 * std::size_t(f_in) * dtype_size(dtype)) + (std::size_t(64) << 20));
  Stream comm_owner = gpu ? Stream::create() : Stream();

  // The slowest rank's mean time per phase of one forward + backward with K chunks.
  RouterStats stats;
  auto measure = [&](int chunks) {
    config.dispatch_chunks = chunks;
    MoeLayer layer(config, MoeGroups{ep.get(), nullptr, nullptr});
    layer.set_comm_stream(comm_owner.ref());
    PhaseTimer phases(gpu, stream);
    auto run_once = [&](bool timed) {
      arena.reset();
      if (timed) phases.start();
      layer.set_phase_timer(timed ? &phases : nullptr);
      layer.forward(x, weights, true, RngKey{7, 0, 0}, world->rank() * o.tokens, arena, out, stream);
      layer.backward(dout, weights, arena, dx, grads, GradMode::overwrite, stream);  // as a step's first micro-batch
      if (timed) phases.collect();
      synchronize(stream);
    };
    for (int i = 0; i < 3; ++i) run_once(false);
    for (int i = 0; i < o.repeats; ++i) run_once(true);
    stats = layer.stats(stream);
    std::map<std::string, double> mean_ms;
    for (const char* name : kPhases) mean_ms[name] = 0.0;
    for (const auto& [name, ms] : phases.totals_ms()) mean_ms[name] = ms / o.repeats;
    std::vector<double> values;
    for (const auto& [name, ms] : mean_ms) values.push_back(ms);
    SY_MPI(MPI_Allreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    std::size_t i = 0;
    for (auto& [name, ms] : mean_ms) ms = values[i++];
    return mean_ms;
  };
  auto total_of = [](const std::map<std::string, double>& ms) {
    double total = 0;
    for (const auto& [name, v] : ms) total += v;
    return total;
  };
  std::map<std::string, double> whole = measure(1), piped;
  const bool pipelined = o.ep > 1 && o.chunks > 1;
  if (pipelined) piped = measure(o.chunks);
  const double ceiling = dense_gemm_ceiling_tflops(o.device, stream);

  // Expert rows one rank executes (capacity padding included; dropless: the mean over ranks),
  // and their GEMM work: forward 2 GEMMs, backward 4.
  const double expert_rows =
      o.dropless ? double(o.tokens) * o.top_k
                 : double(o.ep) * double(local) * double(router_capacity(config.router, o.tokens, true));
  const double expert_flops = 3.0 * 2.0 * expert_rows * double(o.d_model) * double(f_in + o.d_ff);
  const double expert_tflops = expert_flops / (whole["experts"] * 1e-3) * 1e-12;
  // The four exchanges (dispatch and combine, forward and backward) each move a rank's send rows
  // (as many as it receives: expert_rows); the share (P - 1) / P crosses the network. Bus
  // bandwidth as NCCL's tests count it for all-to-all.
  const double exchange_bytes = expert_rows * double(row_bytes);
  const double bus_gbs = 4.0 * exchange_bytes * double(o.ep - 1) / double(o.ep) / (whole["all_to_all"] * 1e-3) * 1e-9;

  if (world->rank() == 0) {
    std::printf("switchyard bench moe: %d ranks (ep %d), %s, %s\n", runtime.world_size(), o.ep,
                gpu ? cuda_device_description(0).c_str() : "CPU", dtype_name(dtype));
    std::printf("tokens/rank %lld, d_model %lld, d_ff %lld, experts %d (local %lld), top-%d, %s, activation %s\n",
                (long long)o.tokens, (long long)o.d_model, (long long)o.d_ff, o.experts, (long long)local, o.top_k,
                o.dropless ? std::string("dropless").c_str() : capacity_text(o.capacity_factor).c_str(),
                o.activation == ExpertActivation::gelu   ? "gelu"
                : o.activation == ExpertActivation::relu ? "relu"
                                                         : "swiglu");
    std::printf("dropped %.2f%% of choices; aux %.4g, z %.4g; mean of %d forward+backward runs, slowest rank\n\n",
                100.0 * stats.dropped_fraction, stats.aux_loss, stats.z_loss, o.repeats);
    const double total = total_of(whole), piped_total = pipelined ? total_of(piped) : 0.0;
    char piped_head[32];
    std::snprintf(piped_head, sizeof piped_head, "K=%d ms", o.chunks);
    std::printf("%-12s %10s %8s", "phase", "K=1 ms", "share");
    if (pipelined) std::printf(" %10s %8s", piped_head, "share");
    std::printf("\n");
    for (const char* name : kPhases) {
      std::printf("%-12s %10.3f %7.1f%%", name, whole[name], total > 0 ? 100.0 * whole[name] / total : 0.0);
      if (pipelined) std::printf(" %10.3f %7.1f%%", piped[name], 100.0 * piped[name] / piped_total);
      std::printf("\n");
    }
    std::printf("%-12s %10.3f %8s", "total", total, "");
    if (pipelined) std::printf(" %10.3f", piped_total);
    std::printf("\n\n");
    std::printf("expert GEMMs: %s over %.0f rows/rank (%.1f%% of the dense GEMM ceiling %s)\n",
                flops_text(expert_tflops).c_str(), expert_rows, 100.0 * expert_tflops / ceiling,
                flops_text(ceiling).c_str());
    if (o.ep > 1)
      std::printf("exchanges, K=1: 4 x %.1f MiB per rank in %.3f ms: %.1f GB/s bus bandwidth\n",
                  exchange_bytes / double(1 << 20), whole["all_to_all"], bus_gbs);
    if (pipelined)
      std::printf("pipelined, K=%d: exposed all-to-all %.3f ms (%.1f%% of the K=1 time); layer %.3f -> %.3f ms "
                  "(%.2fx)\n",
                  o.chunks, piped["all_to_all"], 100.0 * piped["all_to_all"] / whole["all_to_all"], total, piped_total,
                  total / piped_total);
    std::printf("layer: %.0f tokens/s per rank\n", double(o.tokens) / ((pipelined ? piped_total : total) * 1e-3));
    if (o.json) {
      auto phases_json = [&](std::map<std::string, double>& ms, double sum) {
        std::string text = "{";
        for (const char* name : kPhases) {
          char entry[64];
          std::snprintf(entry, sizeof entry, "\"%s\": %.4f, ", name, ms[name]);
          text += entry;
        }
        char entry[32];
        std::snprintf(entry, sizeof entry, "\"total\": %.4f}", sum);
        return text + entry;
      };
      std::printf("{\"bench\": \"moe\", \"ranks\": %d, \"ep\": %d, \"tokens\": %lld, \"experts\": %d, "
                  "\"exchange_bytes\": %.0f, \"exchange_busbw_gbs\": %.2f, \"expert_tflops\": %.2f, "
                  "\"chunks\": %d, \"whole_ms\": %s, \"pipelined_ms\": %s}\n",
                  runtime.world_size(), o.ep, (long long)o.tokens, o.experts, o.ep > 1 ? exchange_bytes : 0.0,
                  o.ep > 1 ? bus_gbs : 0.0, expert_tflops, pipelined ? o.chunks : 1, phases_json(whole, total).c_str(),
                  pipelined ? phases_json(piped, piped_total).c_str() : "null");
    }
  }
  return 0;
}

}  // namespace sy::bench
