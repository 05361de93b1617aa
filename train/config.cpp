// Config parsing and validation. Every key is one ConfigField built by the helpers below, so
// parsing, --set, range checks, the YAML dump and the README reference share one table.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>

#include "core/check.h"

namespace sy {
namespace {

constexpr ErrorKind kConfig = ErrorKind::config;

std::string scalar_text(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "nothing";
}

template <class T>
T parse_as(const std::string& path, const YAML::Node& node, const char* expected) {
  SY_INPUT_CHECK(kConfig, node.IsScalar()) << path << ": expected " << expected << ", got " << scalar_text(node);
  T value{};
  SY_INPUT_CHECK(kConfig, YAML::convert<T>::decode(node, value))
      << path << ": expected " << expected << ", got " << scalar_text(node);
  return value;
}

std::string format_double(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

template <class S, class T>
ConfigField field(std::string path, S Config::*section, T S::*member, std::string type, std::string doc,
                  std::function<T(const std::string&, const YAML::Node&)> parse,
                  std::function<std::string(const T&)> show) {
  ConfigField f;
  f.path = path;
  f.type = std::move(type);
  f.doc = std::move(doc);
  f.set = [path, section, member, parse](Config& c, const YAML::Node& node) { (c.*section).*member = parse(path, node); };
  f.get = [section, member, show](const Config& c) { return show((c.*section).*member); };
  return f;
}

template <class S>
ConfigField int_field(std::string path, S Config::*section, int S::*member, int min, std::string doc,
                      int max = INT_MAX) {
  std::string type = "int >= " + std::to_string(min) + (max < INT_MAX ? " and <= " + std::to_string(max) : "");
  return field<S, int>(
      std::move(path), section, member, std::move(type), std::move(doc),
      [min, max](const std::string& p, const YAML::Node& n) {
        const long long v = parse_as<long long>(p, n, "an integer");
        SY_INPUT_CHECK(kConfig, v >= min) << p << " must be >= " << min << ", got " << v;
        SY_INPUT_CHECK(kConfig, v <= max) << p << " must be <= " << max << ", got " << v;
        return int(v);
      },
      [](const int& v) { return std::to_string(v); });
}

// A float in a range; `lo_open`/`hi_open` make that end exclusive.
template <class S>
ConfigField float_field(std::string path, S Config::*section, double S::*member, double lo, double hi, bool lo_open,
                        bool hi_open, std::string doc) {
  std::ostringstream type;
  type << "float in " << (lo_open ? "(" : "[") << format_double(lo) << ", " << format_double(hi) << (hi_open ? ")" : "]");
  const std::string range = type.str().substr(std::string("float in ").size());
  return field<S, double>(
      std::move(path), section, member, type.str(), std::move(doc),
      [=](const std::string& p, const YAML::Node& n) {
        const double v = parse_as<double>(p, n, "a number");
        const bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
        SY_INPUT_CHECK(kConfig, ok) << p << " must be in " << range << ", got " << format_double(v);
        return v;
      },
      [](const double& v) { return format_double(v); });
}

template <class S>
ConfigField bool_field(std::string path, S Config::*section, bool S::*member, std::string doc) {
  return field<S, bool>(
      std::move(path), section, member, "bool", std::move(doc),
      [](const std::string& p, const YAML::Node& n) { return parse_as<bool>(p, n, "true or false"); },
      [](const bool& v) { return std::string(v ? "true" : "false"); });
}

template <class S>
ConfigField string_field(std::string path, S Config::*section, std::string S::*member, std::string doc) {
  return field<S, std::string>(
      std::move(path), section, member, "string", std::move(doc),
      [](const std::string& p, const YAML::Node& n) { return parse_as<std::string>(p, n, "a string"); },
      [](const std::string& v) { return v.empty() ? std::string("\"\"") : v; });
}

template <class S>
ConfigField enum_field(std::string path, S Config::*section, std::string S::*member, std::vector<std::string> options,
                       std::string doc) {
  std::string list;
  for (const auto& o : options) list += (list.empty() ? "" : " | ") + o;
  return field<S, std::string>(
      std::move(path), section, member, "one of " + list, std::move(doc),
      [options, list](const std::string& p, const YAML::Node& n) {
        const std::string v = parse_as<std::string>(p, n, "a string");
        SY_INPUT_CHECK(kConfig, std::find(options.begin(), options.end(), v) != options.end())
            << p << " must be one of " << list << ", got '" << v << "'";
        return v;
      },
      [](const std::string& v) { return v; });
}

std::vector<ConfigField> make_fields() {
  using C = Config;
  return {
      string_field("run.name", &C::run, &RunConfig::name, "name of the run, used in logs"),
      field<RunConfig, std::uint64_t>(
          "run.seed", &C::run, &RunConfig::seed, "int >= 0", "seeds initialisation, noise and data order",
          [](const std::string& p, const YAML::Node& n) { return parse_as<std::uint64_t>(p, n, "a non-negative integer"); },
          [](const std::uint64_t& v) { return std::to_string(v); }),
      string_field("run.out_dir", &C::run, &RunConfig::out_dir, "directory for metrics.jsonl, config and checkpoints"),
      enum_field("run.device", &C::run, &RunConfig::device, {"auto", "cpu", "cuda"},
                 "auto: a GPU per rank when every rank has one, else the CPU"),
      int_field("run.profile_step", &C::run, &RunConfig::profile_step, 0,
                "step (1-based) whose kernels a profiler started with --profile-from-start off records; 0: none"),

      int_field("model.vocab_size", &C::model, &ModelConfig::vocab_size, 2, "vocabulary size", 65536),
      int_field("model.d_model", &C::model, &ModelConfig::d_model, 1, "residual stream width"),
      int_field("model.n_layers", &C::model, &ModelConfig::n_layers, 1, "decoder blocks"),
      int_field("model.n_heads", &C::model, &ModelConfig::n_heads, 1, "query heads"),
      int_field("model.n_kv_heads", &C::model, &ModelConfig::n_kv_heads, 1,
                "key/value heads (n_heads: MHA, 1: MQA, between: GQA); divides n_heads"),
      int_field("model.d_ff", &C::model, &ModelConfig::d_ff, 1, "dense FFN width"),
      int_field("model.max_seq_len", &C::model, &ModelConfig::max_seq_len, 1, "longest sequence the model accepts"),
      float_field("model.rope_theta", &C::model, &ModelConfig::rope_theta, 1.0, 1e12, false, false, "RoPE base"),
      float_field("model.norm_eps", &C::model, &ModelConfig::norm_eps, 0.0, 1.0, true, true, "RMSNorm epsilon"),
      bool_field("model.tied_embeddings", &C::model, &ModelConfig::tied_embeddings,
                 "LM head shares the token embedding"),
      enum_field("model.activation", &C::model, &ModelConfig::activation, {"gelu", "relu", "swiglu"},
                 "FFN activation (dense and experts)"),
      float_field("model.init_std", &C::model, &ModelConfig::init_std, 0.0, 1.0, true, false,
                  "std of the normal initialisation"),
      enum_field("model.attention_kernel", &C::model, &ModelConfig::attention_kernel, {"auto", "mma", "wgmma"},
                 "flash attention on CUDA: wgmma (Hopper, bf16, head dim 64), mma (mma.sync, every GPU), "
                 "or auto (wgmma where it applies, mma elsewhere)"),

      int_field("moe.experts", &C::moe, &MoeConfig::experts, 1, "experts per MoE layer"),
      int_field("moe.top_k", &C::moe, &MoeConfig::top_k, 1, "experts per token (1: Switch)"),
      int_field("moe.every", &C::moe, &MoeConfig::every, 0, "MoE FFN in every n-th block; 0: dense model"),
      int_field("moe.d_ff", &C::moe, &MoeConfig::d_ff, 0, "expert FFN width; 0: model.d_ff"),
      float_field("moe.capacity_factor", &C::moe, &MoeConfig::capacity_factor, 0.0, 1e6, true, false,
                  "training capacity C = ceil(factor * tokens * k / experts) per rank"),
      float_field("moe.eval_capacity_factor", &C::moe, &MoeConfig::eval_capacity_factor, 0.0, 1e6, true, false,
                  "capacity factor for evaluation"),
      bool_field("moe.dropless", &C::moe, &MoeConfig::dropless, "no capacity limit, no dropped tokens"),
      enum_field("moe.drop_policy", &C::moe, &MoeConfig::drop_policy, {"position", "probability"},
                 "which tokens past capacity are dropped: later ones, or lower-gate ones"),
      enum_field("moe.noise", &C::moe, &MoeConfig::noise, {"none", "jitter", "gaussian"},
                 "router noise in training: none, multiplicative jitter, or noisy top-k"),
      float_field("moe.jitter_eps", &C::moe, &MoeConfig::jitter_eps, 0.0, 1.0, false, true,
                  "jitter range [1-eps, 1+eps]"),
      bool_field("moe.renormalize", &C::moe, &MoeConfig::renormalize, "k > 1: gates of the k choices sum to 1"),
      bool_field("moe.recompute_activation", &C::moe, &MoeConfig::recompute_activation,
                 "recompute the experts' activation in backward: saves tokens x capacity x d_ff per MoE layer "
                 "for one elementwise pass"),
      int_field("moe.dispatch_chunks", &C::moe, &MoeConfig::dispatch_chunks, 1,
                "pieces each expert-parallel all-to-all is cut into: the experts compute one while the next "
                "travels (1: no overlap; no effect at parallel.expert = 1)"),
      float_field("moe.aux_loss_coef", &C::moe, &MoeConfig::aux_loss_coef, 0.0, 1e3, false, false,
                  "Switch load-balancing loss coefficient"),
      float_field("moe.z_loss_coef", &C::moe, &MoeConfig::z_loss_coef, 0.0, 1e3, false, false,
                  "router z-loss coefficient"),
      enum_field("moe.loss_scope", &C::moe, &MoeConfig::loss_scope, {"local", "global"},
                 "balancing statistics per rank, or reduced over data parallelism"),

      int_field("parallel.tensor", &C::parallel, &ParallelConfig::tensor, 1, "tensor-parallel size (within a node)"),
      int_field("parallel.expert", &C::parallel, &ParallelConfig::expert, 1,
                "expert-parallel size; divides the data-parallel size"),
      bool_field("parallel.zero1", &C::parallel, &ParallelConfig::zero1, "shard optimizer state over data parallelism"),
      float_field("parallel.bucket_mb", &C::parallel, &ParallelConfig::bucket_mb, 0.0, 1e5, true, false,
                  "gradient all-reduce bucket size in MiB"),

      int_field("train.steps", &C::train, &TrainConfig::steps, 1, "optimizer steps"),
      int_field("train.micro_batch", &C::train, &TrainConfig::micro_batch, 1, "sequences per rank per micro-batch"),
      int_field("train.seq_len", &C::train, &TrainConfig::seq_len, 1, "tokens per sequence"),
      int_field("train.grad_accum", &C::train, &TrainConfig::grad_accum, 1, "micro-batches per optimizer step"),
      enum_field("train.precision", &C::train, &TrainConfig::precision, {"auto", "fp32", "bf16"},
                 "compute precision; auto: bf16 on GPU, fp32 on CPU (masters are always fp32)"),
      float_field("train.max_grad_norm", &C::train, &TrainConfig::max_grad_norm, 0.0, 1e9, false, false,
                  "global gradient-norm clip; 0 disables"),

      float_field("optimizer.lr", &C::optimizer, &OptimizerConfig::lr, 0.0, 10.0, true, false, "peak learning rate"),
      float_field("optimizer.beta1", &C::optimizer, &OptimizerConfig::beta1, 0.0, 1.0, false, true, "AdamW beta1"),
      float_field("optimizer.beta2", &C::optimizer, &OptimizerConfig::beta2, 0.0, 1.0, false, true, "AdamW beta2"),
      float_field("optimizer.eps", &C::optimizer, &OptimizerConfig::eps, 0.0, 1.0, true, false, "AdamW epsilon"),
      float_field("optimizer.weight_decay", &C::optimizer, &OptimizerConfig::weight_decay, 0.0, 10.0, false, false,
                  "decoupled weight decay (not on norms)"),

      int_field("schedule.warmup_steps", &C::schedule, &ScheduleConfig::warmup_steps, 0, "linear warmup steps"),
      enum_field("schedule.decay", &C::schedule, &ScheduleConfig::decay, {"cosine", "linear", "constant"},
                 "decay after warmup, down to min_lr_ratio * lr at the last step"),
      float_field("schedule.min_lr_ratio", &C::schedule, &ScheduleConfig::min_lr_ratio, 0.0, 1.0, false, false,
                  "final learning rate as a fraction of the peak"),

      enum_field("data.source", &C::data, &DataConfig::source, {"bin", "synthetic"},
                 "token shards (llm.c .bin) or synthetic tokens for throughput runs"),
      string_field("data.train", &C::data, &DataConfig::train, "training shards (glob)"),
      string_field("data.val", &C::data, &DataConfig::val, "validation shards (glob)"),
      enum_field("data.prepare", &C::data, &DataConfig::prepare, {"fortunes", "none"},
                 "text to turn into byte-level shards when data.train matches nothing"),

      int_field("log.every", &C::log, &LogConfig::every, 1, "steps between metric lines"),
      bool_field("log.progress", &C::log, &LogConfig::progress, "progress bar with ETA on rank 0"),

      bool_field("checkpoint.enabled", &C::checkpoint, &CheckpointConfig::enabled,
                 "write checkpoints (false for throughput runs)"),
      int_field("checkpoint.every", &C::checkpoint, &CheckpointConfig::every, 0, "steps between checkpoints; 0: at the end only"),
      string_field("checkpoint.dir", &C::checkpoint, &CheckpointConfig::dir, "checkpoint directory; empty: <run.out_dir>/checkpoints"),
      string_field("checkpoint.resume", &C::checkpoint, &CheckpointConfig::resume,
                   "none, auto (the latest in checkpoint.dir), or a checkpoint path"),
      int_field("checkpoint.keep", &C::checkpoint, &CheckpointConfig::keep, 1, "checkpoints kept on disk"),

      int_field("eval.every", &C::eval, &EvalConfig::every, 0, "steps between validation passes; 0: never"),
      int_field("eval.batches", &C::eval, &EvalConfig::batches, 1, "validation micro-batches per pass"),
  };
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

const ConfigField* find_field(const std::string& path) {
  for (const ConfigField& f : config_fields())
    if (f.path == path) return &f;
  return nullptr;
}

[[noreturn]] void unknown_key(const std::string& where, const std::string& path) {
  const ConfigField* best = nullptr;
  std::size_t best_distance = 4;  // suggest only close matches
  for (const ConfigField& f : config_fields()) {
    const std::size_t d = edit_distance(path, f.path);
    if (d < best_distance) {
      best_distance = d;
      best = &f;
    }
  }
  SY_INPUT_FAIL(kConfig) << where << "unknown key " << path
                         << (best ? " (did you mean " + best->path + "?)" : std::string());
}

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names{"run", "model", "moe", "parallel", "train", "optimizer",
                                              "schedule", "data", "log", "checkpoint", "eval"};
  return names;
}

}  // namespace

const std::vector<ConfigField>& config_fields() {
  static const std::vector<ConfigField> fields = make_fields();
  return fields;
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  const std::string where = source_name + ": ";
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    SY_INPUT_FAIL(kConfig) << where << "not valid YAML: " << e.what();
  }
  Config config;
  if (root.IsDefined() && !root.IsNull()) {
    SY_INPUT_CHECK(kConfig, root.IsMap()) << where << "expected a mapping of sections (run, model, moe, ...)";
    for (const auto& section : root) {
      const std::string name = section.first.as<std::string>();
      if (std::find(section_names().begin(), section_names().end(), name) == section_names().end()) {
        std::string list;
        for (const auto& s : section_names()) list += (list.empty() ? "" : ", ") + s;
        SY_INPUT_FAIL(kConfig) << where << "unknown section '" << name << "' (expected one of: " << list << ")";
      }
      if (section.second.IsNull()) continue;
      SY_INPUT_CHECK(kConfig, section.second.IsMap()) << where << name << ": expected a mapping of keys, got "
                                                      << scalar_text(section.second);
      for (const auto& entry : section.second) {
        const std::string path = name + "." + entry.first.as<std::string>();
        const ConfigField* f = find_field(path);
        if (!f) unknown_key(where, path);
        try {
          f->set(config, entry.second);
        } catch (const Error& e) {
          // Name the file as well as the key.
          throw Error(e.kind(), std::string(e.what()).insert(std::string(e.what()).find(": ") + 2, where));
        }
      }
    }
  }
  for (const std::string& assignment : overrides) apply_override(config, assignment);
  validate_config(config);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  SY_INPUT_CHECK(kConfig, in.good()) << path << ": cannot open the config file";
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, overrides);
}

void apply_override(Config& config, const std::string& assignment) {
  const std::size_t eq = assignment.find('=');
  SY_INPUT_CHECK(kConfig, eq != std::string::npos && eq > 0)
      << "--set " << assignment << ": expected key.path=value";
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  const ConfigField* f = find_field(path);
  if (!f) unknown_key("--set: ", path);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    node = YAML::Node(value);
  }
  if (!node.IsScalar()) node = YAML::Node(value);
  f->set(config, node);
}

void validate_config(const Config& c) {
  const ModelConfig& m = c.model;
  SY_INPUT_CHECK(kConfig, m.n_heads % m.n_kv_heads == 0)
      << "model.n_heads=" << m.n_heads << " is not divisible by model.n_kv_heads=" << m.n_kv_heads;
  SY_INPUT_CHECK(kConfig, m.d_model % m.n_heads == 0)
      << "model.d_model=" << m.d_model << " is not divisible by model.n_heads=" << m.n_heads;
  SY_INPUT_CHECK(kConfig, (m.d_model / m.n_heads) % 2 == 0)
      << "model.d_model / model.n_heads = " << m.d_model / m.n_heads << " must be even for RoPE";
  SY_INPUT_CHECK(kConfig, c.train.seq_len <= m.max_seq_len)
      << "train.seq_len=" << c.train.seq_len << " exceeds model.max_seq_len=" << m.max_seq_len;
  if (c.moe.every > 0) {
    SY_INPUT_CHECK(kConfig, c.moe.top_k <= c.moe.experts)
        << "moe.top_k=" << c.moe.top_k << " exceeds moe.experts=" << c.moe.experts;
    SY_INPUT_CHECK(kConfig, !c.moe.renormalize || c.moe.top_k > 1)
        << "moe.renormalize needs moe.top_k > 1 (with one choice the gate is a constant 1 and the router "
           "gets no gradient)";
    SY_INPUT_CHECK(kConfig, c.moe.every <= m.n_layers)
        << "moe.every=" << c.moe.every << " exceeds model.n_layers=" << m.n_layers << " (no block would be MoE)";
  }
  SY_INPUT_CHECK(kConfig, m.n_heads % c.parallel.tensor == 0)
      << "model.n_heads=" << m.n_heads << " is not divisible by parallel.tensor=" << c.parallel.tensor;
  SY_INPUT_CHECK(kConfig, m.n_kv_heads % c.parallel.tensor == 0)
      << "model.n_kv_heads=" << m.n_kv_heads << " is not divisible by parallel.tensor=" << c.parallel.tensor;
  SY_INPUT_CHECK(kConfig, m.d_ff % c.parallel.tensor == 0)
      << "model.d_ff=" << m.d_ff << " is not divisible by parallel.tensor=" << c.parallel.tensor;
  const int expert_ff = c.moe.d_ff > 0 ? c.moe.d_ff : m.d_ff;
  SY_INPUT_CHECK(kConfig, expert_ff % c.parallel.tensor == 0)
      << "moe.d_ff=" << expert_ff << " is not divisible by parallel.tensor=" << c.parallel.tensor;
  if (c.moe.every > 0) {
    SY_INPUT_CHECK(kConfig, c.moe.experts % c.parallel.expert == 0)
        << "moe.experts=" << c.moe.experts << " is not divisible by parallel.expert=" << c.parallel.expert;
  }
  SY_INPUT_CHECK(kConfig, c.data.source != "bin" || !c.data.train.empty())
      << "data.train must name the training shards when data.source is bin";
}

void validate_layout(const Config& c, int world_size) {
  SY_INPUT_CHECK(kConfig, world_size % c.parallel.tensor == 0)
      << "parallel.tensor=" << c.parallel.tensor << " does not divide the world size " << world_size;
  const int dp = world_size / c.parallel.tensor;
  SY_INPUT_CHECK(kConfig, dp % c.parallel.expert == 0)
      << "parallel.expert=" << c.parallel.expert << " does not divide the data-parallel size " << dp;
}

std::string config_to_yaml(const Config& config) {
  std::ostringstream out;
  std::string section;
  for (const ConfigField& f : config_fields()) {
    const std::string name = f.path.substr(0, f.path.find('.'));
    if (name != section) {
      out << name << ":\n";
      section = name;
    }
    out << "  " << f.path.substr(f.path.find('.') + 1) << ": " << f.get(config) << "\n";
  }
  return out.str();
}

std::string config_reference_markdown() {
  const Config defaults;
  std::ostringstream out;
  out << "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
  for (const ConfigField& f : config_fields())
    out << "| `" << f.path << "` | " << f.type << " | `" << f.get(defaults) << "` | " << f.doc << " |\n";
  return out.str();
}

}  // namespace sy
