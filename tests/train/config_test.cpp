// The config error matrix: every kind of bad input gives one message naming the key (and the
// file) and what was expected; good input reaches the typed structs.
#include "train/config.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

Config parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_config(yaml, "run.yaml", overrides);
}

// The whole message after the "rank 0: " prefix.
void expect_config_error(const std::string& yaml, const std::string& message,
                         const std::vector<std::string>& overrides = {}) {
  try {
    parse(yaml, overrides);
    ADD_FAILURE() << "expected: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_EQ(std::string(e.what()), "rank 0: " + message);
  }
}

TEST(Config, ValuesReachTheTypedStructs) {
  Config c = parse(
      "model: {d_model: 96, n_heads: 6, n_kv_heads: 2, activation: swiglu}\n"
      "moe: {experts: 4, top_k: 2, noise: gaussian, capacity_factor: 1.5}\n"
      "parallel: {expert: 2, zero1: true}\n");
  EXPECT_EQ(c.model.d_model, 96);
  EXPECT_EQ(c.model.activation, "swiglu");
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.noise, "gaussian");
  EXPECT_DOUBLE_EQ(c.moe.capacity_factor, 1.5);
  EXPECT_TRUE(c.parallel.zero1);
  EXPECT_EQ(c.train.seq_len, Config{}.train.seq_len);  // untouched keys keep their defaults
}

TEST(Config, EmptyFileGivesDefaults) { EXPECT_EQ(config_to_yaml(parse("")), config_to_yaml(Config{})); }

TEST(Config, OverridesApplyInOrderAfterTheFile) {
  Config c = parse("train: {steps: 5}\n", {"train.steps=7", "moe.noise=jitter", "train.steps=9"});
  EXPECT_EQ(c.train.steps, 9);
  EXPECT_EQ(c.moe.noise, "jitter");
}

TEST(Config, YamlDumpParsesBackToTheSameConfig) {
  Config c = parse("model: {d_model: 64, n_heads: 4}\nrun: {seed: 7}\n");
  EXPECT_EQ(config_to_yaml(parse(config_to_yaml(c))), config_to_yaml(c));
}

TEST(Config, ErrorMatrix) {
  expect_config_error("modle: {d_model: 4}\n",
                      "run.yaml: unknown section 'modle' (expected one of: run, model, moe, parallel, train, "
                      "optimizer, schedule, data, log, checkpoint, eval)");
  expect_config_error("model: {d_modle: 4}\n", "run.yaml: unknown key model.d_modle (did you mean model.d_model?)");
  expect_config_error("model: {d_model: abc}\n", "run.yaml: model.d_model: expected an integer, got 'abc'");
  expect_config_error("model: {d_model: 1.5}\n", "run.yaml: model.d_model: expected an integer, got '1.5'");
  expect_config_error("model: {d_model: [1, 2]}\n", "run.yaml: model.d_model: expected an integer, got a list");
  expect_config_error("model: {d_model: 0}\n", "run.yaml: model.d_model must be >= 1, got 0");
  expect_config_error("model: {vocab_size: 70000}\n", "run.yaml: model.vocab_size must be <= 65536, got 70000");
  expect_config_error("optimizer: {beta2: 1.0}\n", "run.yaml: optimizer.beta2 must be in [0, 1), got 1");
  expect_config_error("moe: {dropless: maybe}\n", "run.yaml: moe.dropless: expected true or false, got 'maybe'");
  expect_config_error("moe: {noise: loud}\n",
                      "run.yaml: moe.noise must be one of none | jitter | gaussian, got 'loud'");
  expect_config_error("model: 3\n", "run.yaml: model: expected a mapping of keys, got '3'");
  expect_config_error("model: {n_heads: 6, n_kv_heads: 4, d_model: 48}\n",
                      "model.n_heads=6 is not divisible by model.n_kv_heads=4");
  expect_config_error("model: {d_model: 100, n_heads: 8, n_kv_heads: 2}\n",
                      "model.d_model=100 is not divisible by model.n_heads=8");
  expect_config_error("train: {seq_len: 2048}\nmodel: {max_seq_len: 1024}\n",
                      "train.seq_len=2048 exceeds model.max_seq_len=1024");
  expect_config_error("moe: {experts: 2, top_k: 3}\n", "moe.top_k=3 exceeds moe.experts=2");
  expect_config_error("moe: {renormalize: true}\n",
                      "moe.renormalize needs moe.top_k > 1 (with one choice the gate is a constant 1 and the router "
                      "gets no gradient)");
  expect_config_error("parallel: {tensor: 4}\nmodel: {n_heads: 4, n_kv_heads: 2}\n",
                      "model.n_kv_heads=2 is not divisible by parallel.tensor=4");
  expect_config_error("parallel: {tensor: 8}\nmodel: {n_heads: 4, n_kv_heads: 4}\n",
                      "model.n_heads=4 is not divisible by parallel.tensor=8");
  expect_config_error("parallel: {expert: 3}\n", "moe.experts=8 is not divisible by parallel.expert=3");
  // yaml-cpp's own wording differs between versions; the prefix is ours.
  expect_error([] { parse("model: {d_model: 8\n"); }, ErrorKind::config, "rank 0: run.yaml: not valid YAML: ");
}

TEST(Config, BadOverrides) {
  expect_config_error("", "--set train.steps: expected key.path=value", {"train.steps"});
  expect_config_error("", "--set: unknown key train.stepz (did you mean train.steps?)", {"train.stepz=3"});
  expect_config_error("", "train.steps must be >= 1, got -2", {"train.steps=-2"});
}

TEST(Config, LayoutMustFitTheWorldSize) {
  Config c = parse("parallel: {tensor: 2, expert: 2}\nmodel: {n_heads: 4, n_kv_heads: 2}\n");
  expect_error([&] { validate_layout(c, 6); }, ErrorKind::config, "parallel.expert=2 does not divide the data-parallel size 3");
  expect_error([&] { validate_layout(c, 3); }, ErrorKind::config, "parallel.tensor=2 does not divide the world size 3");
  validate_layout(c, 8);
}

TEST(Config, MissingFileIsNamed) {
  expect_error([] { load_config("/nonexistent/run.yaml"); }, ErrorKind::config,
               "/nonexistent/run.yaml: cannot open the config file");
}

TEST(Config, ReferenceListsEveryKeyWithItsDefault) {
  const std::string md = config_reference_markdown();
  for (const ConfigField& f : config_fields()) EXPECT_NE(md.find("`" + f.path + "`"), std::string::npos) << f.path;
  EXPECT_NE(md.find("| `moe.capacity_factor` | float in (0, 1e+06] | `1.25` |"), std::string::npos) << md;
}

}  // namespace
}  // namespace sy::test
