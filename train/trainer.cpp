// The training loop and its reporting.
#include "train/trainer.h"

#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>

#include "core/ops.h"
#include "core/phase_timer.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/process_grid.h"
#include "train/checkpoint.h"
#include "train/data_loader.h"
#include "train/host_slots.h"
#include "train/model.h"
#include "train/prepare.h"
#include "train/schedule.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;

Device choose_device(const Config& c, const MpiRuntime& runtime) {
  if (c.run.device == "cpu") return Device::cpu;
  if (c.run.device == "cuda") {
    SY_INPUT_CHECK(ErrorKind::config, runtime.has_gpu_per_rank())
        << "run.device=cuda but not every rank of the node has a GPU of its own";
    return Device::cuda;
  }
  return runtime.has_gpu_per_rank() ? Device::cuda : Device::cpu;
}

DType choose_dtype(const Config& c, Device device) {
  if (c.train.precision == "fp32") return DType::f32;
  if (c.train.precision == "bf16") {
    SY_INPUT_CHECK(ErrorKind::config, device == Device::cuda) << "train.precision=bf16 needs a GPU (the CPU backend runs fp32)";
    return DType::bf16;
  }
  return device == Device::cuda ? DType::bf16 : DType::f32;
}

// Dense bf16 peak per device for MFU (datasheet, SXM parts); 0 where unknown (CPU).
double peak_flops(Device device) {
  if (device != Device::cuda) return 0.0;
  const std::string name = cuda_device_description(0);
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989e12;
  if (name.find("A100") != std::string::npos) return 312e12;
  return 0.0;
}

// Activation bytes of one micro-batch forward + backward, counted from what the model keeps:
// per block its saved tensors, plus the largest block's backward scratch (released block by
// block), the logits and the embedding-side buffers. The arena starts at this size and grows in
// the first step if the count falls short.
std::size_t arena_bytes(const Config& c, int tp, int ep, DType dtype, bool flash) {
  const double s = double(dtype_size(dtype));
  const double b = c.train.micro_batch, t = c.train.seq_len, n = b * t, d = c.model.d_model;
  const double heads = double(c.model.n_heads) / tp, kv_heads = double(c.model.n_kv_heads) / tp;
  const double head_dim = d / c.model.n_heads, vocab = c.model.vocab_size;
  const double qkv = (heads + 2 * kv_heads) * head_dim;
  const double ff_in_factor = c.model.activation == "swiglu" ? 2 : 1;
  // Norm outputs, residuals, projections and the q/k/v heads (qkv rows and heads: twice).
  const double attention_saved = s * n * (9 * d + 2 * qkv) + 8 * n +
                                 (flash ? 4 * b * heads * t : s * b * heads * t * t);
  // Flash: each row's delta and (on CUDA) the bf16 dS tiles of the causal triangle.
  const double ds_tiles = 2 * b * heads * (64 * std::ceil(t / 64)) * (64 * std::ceil(t / 64) + 64) / 2;
  const double attention_scratch =
      s * n * (4 * d + 2 * qkv) + (flash ? 4 * b * heads * t + ds_tiles : s * b * heads * t * t);
  const double dense_ff = double(c.model.d_ff) / tp;
  const double dense_saved = s * n * dense_ff * (ff_in_factor + 1);
  const int moe_blocks = c.moe.every > 0 ? c.model.n_layers / c.moe.every : 0;
  double moe_saved = 0, moe_scratch = 0;
  if (moe_blocks > 0) {
    // Expert rows per rank: capacity slots, or in dropless mode up to every token's k choices
    // from each of the ep ranks.
    const double rows = n * c.moe.top_k * (c.moe.dropless ? ep : std::max(1.0, c.moe.capacity_factor)) + 1024;
    const double f = double(c.moe.d_ff > 0 ? c.moe.d_ff : c.model.d_ff) / tp;
    // Router state in fp32 (input copy, logits, probs, noise) and the dispatch/combine buffers.
    moe_saved = 4 * n * (d + 6 * c.moe.experts) + 16 * n * c.moe.top_k + s * rows * (6 * d + f * (ff_in_factor + 1));
    moe_scratch = 4 * n * d + s * rows * (6 * d + f * (ff_in_factor + 1));
  }
  const double blocks = (c.model.n_layers - moe_blocks) * (attention_saved + dense_saved) +
                        moe_blocks * (attention_saved + moe_saved);
  const double scratch = std::max(attention_scratch, std::max(moe_scratch, 3 * s * n * dense_ff * ff_in_factor));
  const double bytes = blocks + scratch + s * n * (vocab + 6 * d) + 16 * n;
  return std::size_t(bytes * 1.1) + (std::size_t(64) << 20);
}

std::string duration_text(double seconds) {
  char text[32];
  const long s = long(seconds + 0.5);
  if (s >= 3600) std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(text, sizeof text, "%lds", s);
  return text;
}

// Prepares byte-level shards from the configured corpus when data.train matches nothing (rank
// 0 writes, everyone waits).
bool any_file_matches(const std::string& pattern) {
  glob_t matches{};
  const bool found = ::glob(pattern.c_str(), 0, nullptr, &matches) == 0 && matches.gl_pathc > 0;
  globfree(&matches);
  return found;
}

void ensure_data(const Config& c, Communicator& host) {
  const int rank = host.rank();
  if (c.data.source != "bin" || any_file_matches(c.data.train)) return;
  SY_INPUT_CHECK(ErrorKind::data, c.data.prepare == "fortunes")
      << "data.train=" << c.data.train << " matches no shard files (run switchyard prepare, or set data.prepare)";
  if (rank == 0) {
    const std::string out_dir = std::filesystem::path(c.data.train).parent_path().string();
    std::printf("preparing byte-level shards in %s from the fortunes corpus\n", out_dir.c_str());
    PrepareOptions options;
    options.inputs = find_default_corpus();
    options.out_dir = out_dir;
    options.seq_len = c.train.seq_len;
    options.strip_fortune_separators = true;
    std::printf("%s\n", prepare(options).describe().c_str());
  }
  host.barrier();
}

std::unique_ptr<BatchSource> make_source(const Config& c, const std::string& pattern, const BatchLayout& layout) {
  if (c.data.source == "synthetic") return std::make_unique<SyntheticDataset>(layout);
  return std::make_unique<TokenDataset>(pattern, layout);
}

// The mean of a host value over the job's ranks (every tp replica holds the same value, so
// this is also the mean over data parallelism).
double mean_over(Communicator& host, double value) {
  Tensor t(&value, {1}, DType::f64, Device::cpu);
  host.all_reduce(t, ReduceOp::sum);
  return value / host.size();
}

// Mean of f32 values in host memory.
double mean_of(const Tensor& host_values) {
  const float* v = static_cast<const float*>(host_values.data());
  return std::accumulate(v, v + host_values.numel(), 0.0) / double(host_values.numel());
}

// Mean of the per-token losses of this rank (a host read: waits for the stream).
double mean_loss(const Tensor& losses) {
  OwnedTensor host(losses.shape(), DType::f32, Device::cpu);
  copy(host, losses);
  return mean_of(host);
}

}  // namespace

std::string describe_run(const Config& c, int world_size) {
  validate_layout(c, world_size);
  const ModelSize size = model_size(c);
  const GridLayout layout = GridLayout::make(world_size, c.parallel.tensor, c.parallel.expert);
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "parameters: %.2fM total, %.2fM active per token\n", size.total_params / 1e6,
                size.active_params / 1e6);
  s << line;
  std::snprintf(line, sizeof line, "FLOPs per token: %.3g (6 x active + causal attention at seq %d)\n",
                size.flops_per_token, c.train.seq_len);
  s << line;
  // Per rank: fp32 masters, grads and Adam m, v (ZeRO-1 shards the last two over dp), a bf16
  // compute copy, and the activation arena.
  const double params_per_rank = (double(size.total_params - size.expert_params) +
                                  double(size.expert_params) / c.parallel.expert) / c.parallel.tensor;
  const double state = params_per_rank * (4 + 4 + 2) + params_per_rank * 8 / (c.parallel.zero1 ? layout.dp_size() : 1);
  const std::int64_t head_dim = c.model.d_model / c.model.n_heads;
  const double arena = double(arena_bytes(c, c.parallel.tensor, c.parallel.expert, DType::bf16,
                                          flash_attention_supported(Device::cuda, DType::bf16, head_dim)));
  std::snprintf(line, sizeof line, "memory per rank (GPU, bf16): about %.2f GiB parameters and optimizer state + %.2f GiB activations\n",
                state / (1 << 30), arena / (1 << 30));
  s << line;
  s << "tokens per step: " << std::int64_t(c.train.micro_batch) * c.train.seq_len * c.train.grad_accum * layout.dp_size()
    << " (micro_batch " << c.train.micro_batch << " x seq " << c.train.seq_len << " x grad_accum "
    << c.train.grad_accum << " x dp " << layout.dp_size() << ")\n";
  s << layout.describe();
  return s.str();
}

TrainResult train(const Config& c, MpiRuntime& runtime, int job) {
  // The job's ranks: MPI for host values, and the device's communicator for tensors.
  std::unique_ptr<Communicator> mpi_world = make_mpi_world();
  std::unique_ptr<Communicator> host = mpi_world->split(job, mpi_world->rank(), "world");
  const int job_size = host->size();
  validate_layout(c, job_size);
  const Device device = choose_device(c, runtime);
  const DType dtype = choose_dtype(c, device);
  const bool rank0 = host->rank() == 0;
  ensure_data(c, *host);

  Stream stream_owner = device == Device::cuda ? Stream::create() : Stream();
  const StreamRef stream = stream_owner.ref();
  // The MoE layers' chunked all-to-alls run here while their experts compute (moe.dispatch_chunks).
  Stream moe_comm_owner = device == Device::cuda ? Stream::create() : Stream();
  std::unique_ptr<Communicator> device_world = device == Device::cuda ? make_nccl_world() : nullptr;
  std::unique_ptr<Communicator> world =
      device == Device::cuda ? device_world->split(job, device_world->rank(), "world") : host->split(0, host->rank(), "world");
  ProcessGrid grid(*world, c.parallel.tensor, c.parallel.expert);
  const GridLayout& layout = grid.layout();
  if (rank0) {
    std::printf("switchyard train: %s on %d rank(s), %s, %s\n", c.run.name.c_str(), job_size,
                device == Device::cuda ? cuda_device_description(0).c_str() : "CPU", dtype_name(dtype));
    std::printf("%s", layout.describe().c_str());
  }

  BatchLayout batch{c.train.micro_batch, c.train.seq_len, grid.coords().dp, layout.dp_size(), c.run.seed, c.model.vocab_size};
  std::unique_ptr<BatchSource> data = make_source(c, c.data.train, batch);
  std::unique_ptr<BatchSource> val;
  if (c.eval.every > 0) val = make_source(c, c.data.val, batch);

  RegistryOptions options;
  options.device = device;
  options.compute_copy = dtype != DType::f32;
  options.compute_dtype = dtype;
  options.bucket_bytes = std::size_t(c.parallel.bucket_mb * double(1 << 20));
  options.dp_size = layout.dp_size();
  options.edp_size = layout.edp_size();
  ParameterRegistry registry(options);
  Model model(c, grid, registry, dtype);
  registry.allocate();
  model.initialize(c.run.seed, stream);
  registry.refresh_compute_copies(stream);
  OptimizerSettings opt;
  opt.beta1 = float(c.optimizer.beta1);
  opt.beta2 = float(c.optimizer.beta2);
  opt.eps = float(c.optimizer.eps);
  opt.weight_decay = float(c.optimizer.weight_decay);
  opt.zero1 = c.parallel.zero1;
  DistributedOptimizer optimizer(registry, grid.world(), grid.dp(), &grid.edp(), opt, stream);

  const ModelSize size = model_size(c);
  const std::int64_t b = c.train.micro_batch, t = c.train.seq_len, n = b * t;
  const std::int64_t global_tokens = n * c.train.grad_accum * layout.dp_size();
  const bool flash = flash_attention_supported(device, dtype, c.model.d_model / c.model.n_heads);
  // The estimate is the first block; the first step grows the arena to what it needs if that is
  // more, and from the second step on it is one block that is never reallocated.
  std::size_t first_block = arena_bytes(c, layout.tp_size(), layout.ep_size(), dtype, flash);
  if (device == Device::cuda) first_block = std::min(first_block, device_bytes_free() / 2);
  Arena arena(device, first_block, Arena::Growth::growable);
  // Batches go up and losses come back through pinned host buffers, two of each, so the host can
  // prepare step i + 1 while the device still runs step i (see `quiet` below).
  HostSlots batch_slots(device, {b, t}, DType::i32, 2), loss_slots(device, {c.train.grad_accum, n}, DType::f32, 1);
  OwnedTensor inputs_dev({b, t}, DType::i32, device), targets_dev({b, t}, DType::i32, device);
  OwnedTensor losses({c.train.grad_accum, n}, DType::f32, device), eval_losses({n}, DType::f32, device);
  auto load = [&](bool from_val, const DataPosition* at) {
    BatchSource& source = from_val ? *val : *data;
    const int slot = batch_slots.acquire();  // the copies that last read this slot are done
    const Tensor& inputs_host = batch_slots.tensor(slot, 0);
    const Tensor& targets_host = batch_slots.tensor(slot, 1);
    if (at) {
      source.read(*at, inputs_host, targets_host);
    } else {
      source.next(inputs_host, targets_host);
    }
    copy_async(inputs_dev, inputs_host, stream);
    copy_async(targets_dev, targets_host, stream);
    batch_slots.release(slot, stream);
  };

  std::FILE* metrics = nullptr;
  if (rank0) {
    std::filesystem::create_directories(c.run.out_dir);
    std::ofstream(c.run.out_dir + "/config.yaml") << config_to_yaml(c);
    const ModelSize s = size;
    std::printf("model: %.2fM parameters (%.2fM active), %.3g FLOPs per token; %lld tokens per step\n",
                s.total_params / 1e6, s.active_params / 1e6, s.flops_per_token, (long long)global_tokens);
  }
  const bool progress = rank0 && c.log.progress && isatty(fileno(stderr));
  const double peak = peak_flops(device);

  // Resume: checkpoint.resume is none, auto (the newest complete checkpoint in the directory,
  // if any) or a path. The checkpoint holds the global layout, so any (dp, tp, ep) may load it.
  const std::string checkpoint_dir = c.checkpoint.dir.empty() ? c.run.out_dir + "/checkpoints" : c.checkpoint.dir;
  std::string resume_from;
  if (c.checkpoint.resume == "auto") {
    resume_from = latest_checkpoint(checkpoint_dir);
  } else if (c.checkpoint.resume != "none") {
    resume_from = c.checkpoint.resume;
  }
  int first_step = 0;
  if (!resume_from.empty()) {
    const CheckpointState state = load_checkpoint(resume_from, registry, optimizer, mpi_handle(*host));
    first_step = int(state.step);
    data->restore(state.data);
    if (rank0) std::printf("resumed from %s at step %d\n", resume_from.c_str(), first_step);
    SY_INPUT_CHECK(ErrorKind::checkpoint, first_step < c.train.steps)
        << resume_from << ": the checkpoint is at step " << first_step << ", train.steps is " << c.train.steps
        << " (nothing left to train)";
  }
  // A resumed run appends, so the metrics of the steps before the checkpoint are kept.
  if (rank0) {
    metrics = std::fopen((c.run.out_dir + "/metrics.jsonl").c_str(), first_step > 0 ? "a" : "w");
    SY_INPUT_CHECK(ErrorKind::io, metrics != nullptr) << c.run.out_dir << "/metrics.jsonl: cannot open for writing";
  }
  auto save = [&](int steps_done) {
    const std::string path = save_checkpoint(checkpoint_dir, c.checkpoint.keep,
                                             CheckpointState{steps_done, data->position(), c.run.seed, config_to_yaml(c)},
                                             registry, optimizer, mpi_handle(*host));
    if (rank0) std::printf("saved %s\n", path.c_str());
  };

  // Step time split into compute, the MoE phases, grad_sync and the optimizer, summed over each
  // logging window. Communication shows only where the compute stream waits for it: all_to_all
  // (the MoE exchanges' exposed part) and grad_sync (the gradient reductions backward did not hide).
  PhaseTimer phases(device == Device::cuda, stream);
  model.set_phase_timer(&phases);
  model.set_moe_comm_stream(moe_comm_owner.ref());
  optimizer.set_phase_timer(&phases);

  TrainResult result;
  const auto start = Clock::now();
  auto last_finish = start;
  double window_seconds = 0;
  std::int64_t window_tokens = 0;
  int window_steps = 0;
  const bool has_val = val != nullptr;
  auto eval_due = [&](int step) {
    return has_val && c.eval.every > 0 && ((step + 1) % c.eval.every == 0 || step + 1 == c.train.steps);
  };
  auto log_due = [&](int step) {
    return (step + 1) % c.log.every == 0 || step == first_step || step + 1 == c.train.steps || eval_due(step);
  };
  auto checkpoint_due = [&](int step) {
    return c.checkpoint.enabled &&
           (step + 1 == c.train.steps || (c.checkpoint.every > 0 && (step + 1) % c.checkpoint.every == 0));
  };
  // A quiet step needs nothing from the host after it but its loss and phase times, so on the
  // GPU the host enqueues the next step before reading them, and the device never waits for the
  // host between steps. Steps that log (device statistics), evaluate or save (the parameters) are
  // read before the next step changes what they read.
  auto quiet = [&](int step) {
    return device == Device::cuda && !log_due(step) && !checkpoint_due(step) && step + 1 != c.run.profile_step &&
           step + 2 != c.run.profile_step;
  };

  auto enqueue = [&](int step) {
    if (step + 1 == c.run.profile_step) profiler_start();
    const double lr = learning_rate(c, step);
    phases.start();
    // Nothing zeroes the gradients: micro-batch 0 overwrites every one of them (the LM head's in
    // its forward, the rest in its backward) and later micro-batches add to them. That first
    // write is safe without a wait because everything that reads the last step's gradients is
    // ordered before it on `stream`: the optimizer's norm and AdamW run on `stream`, and the
    // gradient sync's reductions, which read (and under ZeRO-1 reduce-scatter out of) the
    // gradients on the sync's own communication stream during backward, are joined to `stream`
    // by GradSync::finish at the start of optimizer.step. On the CPU every call completes when
    // issued.
    for (int micro = 0; micro < c.train.grad_accum; ++micro) {
      arena.reset();
      load(false, nullptr);
      // Global index of this rank's first token: noise is then the same at every layout.
      const std::int64_t first_token =
          ((std::int64_t(step) * c.train.grad_accum + micro) * layout.dp_size() + grid.coords().dp) * n;
      const float loss_scale = float(1.0 / double(n * c.train.grad_accum));
      const GradMode grads = micro == 0 ? GradMode::overwrite : GradMode::accumulate;
      model.forward(inputs_dev, targets_dev, first_token, true, loss_scale, grads, arena, losses.view().select(micro),
                    stream);
      const bool last = micro + 1 == c.train.grad_accum;
      model.backward(grads, arena, stream,
                     last ? [&](const Parameter& p) { optimizer.grad_ready(p); } : std::function<void(const Parameter&)>());
    }
    optimizer.step(float(lr), step + 1, float(c.train.max_grad_norm));
    phases.mark("optimizer");
    const int slot = loss_slots.acquire();
    copy_async(loss_slots.tensor(slot, 0), losses, stream);
    loss_slots.release(slot, stream);
    return slot;
  };

  // Everything after the device has run the step: the loss, timing, eval, logging, checkpoint.
  auto finish = [&](int step, int loss_slot) {
    loss_slots.wait(loss_slot);  // the loss copy follows the optimizer: the step is done
    const double loss = mean_over(*host, mean_of(loss_slots.tensor(loss_slot, 0)));
    if (step + 1 == c.run.profile_step) profiler_stop();
    phases.collect();
    ++window_steps;
    const auto now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - last_finish).count();
    last_finish = now;
    const double lr = learning_rate(c, step);
    result.losses.push_back(loss);
    if (step == first_step) result.first_loss = loss;
    result.final_loss = loss;
    result.steps_run = step + 1 - first_step;
    if (step > first_step) {  // the first step includes one-time set-up costs
      window_seconds += seconds;
      window_tokens += global_tokens;
    }

    double val_loss = -1;
    const bool eval_now = eval_due(step);
    if (eval_now) {
      double sum = 0;
      for (int i = 0; i < c.eval.batches; ++i) {
        arena.reset();
        const DataPosition at{0, i % std::max<std::int64_t>(1, val->steps_per_epoch())};
        load(true, &at);
        model.forward(inputs_dev, targets_dev, 0, false, 0.0f, GradMode::overwrite, arena, eval_losses, stream);
        sum += mean_loss(eval_losses);
      }
      val_loss = mean_over(*host, sum / c.eval.batches);
      result.final_val_loss = val_loss;
    }

    const bool log_now = log_due(step);
    if (log_now) {
      const float grad_norm = optimizer.grad_norm();
      double aux = 0, z = 0, dropped = 0, load_ratio = 0;
      const std::vector<RouterStats> stats = model.moe_stats(stream);
      for (const RouterStats& r : stats) {
        aux += r.aux_loss;
        z += r.z_loss;
        dropped += r.dropped_fraction / double(stats.size());
        const double total = double(std::accumulate(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), std::int64_t(0)));
        const double max = double(*std::max_element(r.tokens_per_expert.begin(), r.tokens_per_expert.end()));
        if (total > 0) load_ratio = std::max(load_ratio, max / (total / double(r.tokens_per_expert.size())));
      }
      aux = mean_over(*host, aux);
      z = mean_over(*host, z);
      // Logged as configured: the router's coefficients carry the accumulation and scope
      // scaling of their gradients, undone here for the value.
      const double scope = c.moe.loss_scope == "global" ? layout.dp_size() : 1;
      aux *= c.train.grad_accum / scope;
      z *= c.train.grad_accum / scope;
      // Mean per-step phase times of the window, the slowest rank's (what the step waits for).
      std::string split_text;
      double exposed_ms = 0;
      for (const char* name :
           {"compute", "router", "permute", "all_to_all", "experts", "combine", "grad_sync", "optimizer"}) {
        const auto it = phases.totals_ms().find(name);
        const double ms = mean_over(*host, it == phases.totals_ms().end() ? 0.0 : it->second / std::max(1, window_steps));
        if (std::strcmp(name, "all_to_all") == 0 || std::strcmp(name, "grad_sync") == 0) exposed_ms += ms;
        char entry[64];
        std::snprintf(entry, sizeof entry, "%s\"%s\": %.3f", split_text.empty() ? "" : ", ", name, ms);
        split_text += entry;
      }
      phases.reset_totals();
      window_steps = 0;
      const double tokens_per_s = window_seconds > 0 ? double(window_tokens) / window_seconds : global_tokens / seconds;
      const double step_ms = 1000.0 * double(global_tokens) / tokens_per_s;
      const double mfu = peak > 0 ? size.flops_per_token * tokens_per_s / (peak * job_size) : -1;
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const double eta = elapsed / (step + 1 - first_step) * (c.train.steps - step - 1);
      if (rank0) {
        if (progress) std::fprintf(stderr, "\r\033[K");
        std::printf("step %5d/%d | loss %.4f | aux %.4f | z %.4f | lr %.2e | grad norm %.3f | %.0f tok/s", step + 1,
                    c.train.steps, loss, aux, z, lr, grad_norm, tokens_per_s);
        if (mfu >= 0) std::printf(" | MFU %.1f%%", 100 * mfu);
        if (job_size > 1) std::printf(" | exposed comm %.1f%%", 100 * exposed_ms / step_ms);
        if (!stats.empty()) std::printf(" | dropped %.2f%% | load max/mean %.2f", 100 * dropped, load_ratio);
        if (val_loss >= 0) std::printf(" | val %.4f", val_loss);
        std::printf(" | eta %s\n", duration_text(eta).c_str());
        std::fflush(stdout);
        std::fprintf(metrics,
                     "{\"step\": %d, \"loss\": %.6f, \"aux\": %.6f, \"z\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, "
                     "\"tokens_per_s\": %.1f, \"mfu\": %s, \"dropped_pct\": %.4f, \"expert_load_max_mean\": %.4f, "
                     "\"val_loss\": %s, \"elapsed_s\": %.3f, \"exposed_comm_ms\": %.3f, \"step_ms\": {%s}}\n",
                     step + 1, loss, aux, z, lr, grad_norm, tokens_per_s,
                     mfu >= 0 ? std::to_string(mfu).c_str() : "null", 100 * dropped, load_ratio,
                     val_loss >= 0 ? std::to_string(val_loss).c_str() : "null", elapsed, exposed_ms,
                     split_text.c_str());
        std::fflush(metrics);
      }
    }
    if (checkpoint_due(step)) save(step + 1);
    if (progress && !log_now) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const int width = 30, filled = int(width * double(step + 1) / c.train.steps);
      std::fprintf(stderr, "\r[%s%s] %d/%d eta %s", std::string(std::size_t(filled), '#').c_str(),
                   std::string(std::size_t(width - filled), '.').c_str(), step + 1, c.train.steps,
                   duration_text(elapsed / (step + 1 - first_step) * (c.train.steps - step - 1)).c_str());
    }
  };

  int pending = -1, pending_slot = 0;  // a quiet step not yet finished
  for (int step = first_step; step < c.train.steps; ++step) {
    const int slot = enqueue(step);
    if (pending >= 0) finish(pending, pending_slot);
    pending = -1;
    if (quiet(step)) {
      pending = step;
      pending_slot = slot;
    } else {
      finish(step, slot);
    }
  }
  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (rank0) {
    if (progress) std::fprintf(stderr, "\r\033[K");
    std::printf("done: %d steps in %s, loss %.4f -> %.4f", result.steps_run, duration_text(total_s).c_str(),
                result.first_loss, result.final_loss);
    if (result.final_val_loss >= 0) std::printf(", val loss %.4f", result.final_val_loss);
    std::printf(", %.0f tokens/s", window_seconds > 0 ? double(window_tokens) / window_seconds : 0.0);
    // Tensors in use at the peak: every persistent allocation plus the arena's high-water mark
    // (the arena's block is reserved whole, as a caching allocator reserves).
    if (device == Device::cuda)
      std::printf(", peak device memory %.2f GiB",
                  double(device_bytes_allocated() - arena.capacity() + arena.peak()) / double(1 << 30));
    std::printf("; metrics in %s/metrics.jsonl\n", c.run.out_dir.c_str());
    std::fclose(metrics);
  }
  return result;
}

}  // namespace sy
