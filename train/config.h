// The typed run configuration: one struct per YAML section, defaults here and nowhere else.
// config_fields() describes every key (path, type, range, documentation) and drives parsing,
// --set overrides, validation messages and the README's config reference.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace sy {

struct RunConfig {
  std::string name = "switchyard";
  std::uint64_t seed = 1234;
  std::string out_dir = "runs/switchyard";
  std::string device = "auto";  // auto | cpu | cuda
  int profile_step = 0;          // 1-based step bracketed for an external profiler; 0: none
};

struct ModelConfig {
  int vocab_size = 256;
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 2;
  int d_ff = 512;
  int max_seq_len = 1024;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tied_embeddings = true;
  std::string activation = "gelu";  // gelu | relu | swiglu
  double init_std = 0.02;
  std::string attention_kernel = "auto";  // auto | mma | wgmma: flash attention's tensor-core instructions on CUDA
};

struct MoeConfig {
  int experts = 8;
  int top_k = 1;
  int every = 2;   // MoE FFN in every `every`-th block (blocks every-1, 2*every-1, ...); 0 = dense model
  int d_ff = 0;    // expert FFN width; 0 = model.d_ff
  double capacity_factor = 1.25;
  double eval_capacity_factor = 2.0;
  bool dropless = false;
  std::string drop_policy = "position";  // position | probability
  std::string noise = "none";            // none | jitter | gaussian
  double jitter_eps = 1e-2;
  bool renormalize = false;
  bool recompute_activation = false;  // recompute the experts' activation in backward instead of keeping it
  int dispatch_chunks = 1;  // pieces per all-to-all, so expert compute overlaps communication (ep > 1)
  double aux_loss_coef = 1e-2;
  double z_loss_coef = 1e-3;
  std::string loss_scope = "local";  // local | global
};

struct ParallelConfig {
  int tensor = 1;
  int expert = 1;
  bool zero1 = false;
  double bucket_mb = 25.0;
};

struct TrainConfig {
  int steps = 200;
  int micro_batch = 8;
  int seq_len = 128;
  int grad_accum = 1;
  std::string precision = "auto";  // auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
  double max_grad_norm = 1.0;
};

struct OptimizerConfig {
  double lr = 3e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

struct ScheduleConfig {
  int warmup_steps = 20;
  std::string decay = "cosine";  // cosine | linear | constant
  double min_lr_ratio = 0.1;
};

struct DataConfig {
  std::string source = "bin";  // bin | synthetic
  std::string train = "data/fortunes/train_*.bin";
  std::string val = "data/fortunes/val_*.bin";
  std::string prepare = "fortunes";  // text to prepare when the shards are missing: fortunes | none
};

struct LogConfig {
  int every = 10;
  bool progress = true;
};

struct CheckpointConfig {
  bool enabled = true;        // false: never write (benchmarks)
  int every = 0;              // 0: only at the end
  std::string dir = "";       // empty: <run.out_dir>/checkpoints
  std::string resume = "none";  // none | auto | a checkpoint path
  int keep = 2;
};

struct EvalConfig {
  int every = 50;  // 0: never
  int batches = 4;
};

struct Config {
  RunConfig run;
  ModelConfig model;
  MoeConfig moe;
  ParallelConfig parallel;
  TrainConfig train;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  DataConfig data;
  LogConfig log;
  CheckpointConfig checkpoint;
  EvalConfig eval;
};

// One configuration key.
struct ConfigField {
  std::string path;  // "model.d_model"
  std::string type;  // "int >= 1", "float in (0, 1)", "one of: gelu relu swiglu", ...
  std::string doc;
  // Parses `value`, checks its range, stores it; throws ErrorKind::config naming the path.
  std::function<void(Config&, const YAML::Node& value)> set;
  std::function<std::string(const Config&)> get;  // the value as YAML text
};
const std::vector<ConfigField>& config_fields();

// Reads a YAML file, applies `overrides` ("key.path=value", in order), and validates what can
// be checked without knowing the world size. Every problem is one sy::Error (ErrorKind::config)
// naming the file or key and what was expected.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});
void apply_override(Config& config, const std::string& assignment);
// Cross-key consistency that does not depend on the world size.
void validate_config(const Config& config);
// Consistency with the job's world size (tensor and expert parallel sizes).
void validate_layout(const Config& config, int world_size);

// Full YAML of a config, every key (written next to each run's outputs).
std::string config_to_yaml(const Config& config);
// Markdown table of every key: path, type, default, meaning (the README's reference).
std::string config_reference_markdown();

}  // namespace sy
