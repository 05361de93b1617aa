// Checkpoints at 2 and 4 ranks: saved at one (tp, ep, zero1) layout and loaded at another, every
// local shard (masters, Adam m and v) equals its slice of the global tensor; a resumed run takes
// the same next step as one that never stopped; bad files fail on every rank with one message.
#include "train/checkpoint.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "parallel/process_grid.h"
#include "train/checkpoint_format.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kBucketBytes = 2048;  // several buckets, so ZeRO-1 shards cut through parameters
constexpr int kExperts = 4;

// A directory every rank sees: rank 0 makes it, the others learn its name.
class SharedDir {
 public:
  SharedDir() {
    std::string path;
    if (world(Device::cpu).rank() == 0) {
      std::string pattern = (fs::temp_directory_path() / "switchyard_ckpt_XXXXXX").string();
      const char* made = ::mkdtemp(pattern.data());
      path = made ? made : "";
    }
    int length = int(path.size());
    MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path.resize(std::size_t(length));
    MPI_Bcast(path.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    std::error_code ignored;
    if (world(Device::cpu).rank() == 0) fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Rank 0 changes a file; the others wait until it has.
template <class F>
void on_rank0(F&& change) {
  if (world(Device::cpu).rank() == 0) change();
  MPI_Barrier(MPI_COMM_WORLD);
}

ParameterSpec spec(const std::string& name, const Shape& shape, ReduceGroup reduce = ReduceGroup::dp) {
  ParameterSpec s;
  s.name = name;
  s.global_shape = shape;
  s.reduce = reduce;
  return s;
}

// Dense, tp row- and column-split, tp-replicated, expert (ep x tp split and ep only) and frozen
// parameters on a tp x dp (ep x edp) grid.
struct Model {
  ProcessGrid grid;
  ParameterRegistry registry;
  std::unique_ptr<DistributedOptimizer> optimizer;

  Model(int tp, int ep, bool zero1, std::int64_t qkv_columns = 48)
      : grid(world(Device::cpu), tp, ep), registry(options(grid.layout())) {
    const int t = grid.tp().rank(), e = grid.ep().rank();
    ParameterSpec embed = spec("embed.weight", {24, 16});
    embed.tp = {0, tp, t};
    ParameterSpec norm = spec("blocks.0.norm.weight", {16});
    norm.tp = {-1, tp, t};
    norm.weight_decay = false;
    ParameterSpec qkv = spec("blocks.0.attn.qkv.weight", {16, qkv_columns});
    qkv.tp = {1, tp, t};
    ParameterSpec w1 = spec("blocks.0.moe.experts.w1", {kExperts, 16, 32}, ReduceGroup::edp);
    w1.tp = {2, tp, t};
    w1.ep = {0, ep, e};
    ParameterSpec scale = spec("blocks.0.moe.experts.scale", {kExperts}, ReduceGroup::edp);
    scale.tp = {-1, tp, t};
    scale.ep = {0, ep, e};
    ParameterSpec router = spec("blocks.0.moe.router.weight", {kExperts, 16});
    router.tp = {-1, tp, t};
    ParameterSpec cos = spec("rope.cos", {8}, ReduceGroup::none);
    cos.tp = {-1, tp, t};
    for (const ParameterSpec& s : {embed, norm, qkv, w1, scale, router, cos}) registry.add(s);
    registry.allocate();
    OptimizerSettings settings;
    settings.zero1 = zero1;
    optimizer = std::make_unique<DistributedOptimizer>(registry, grid.world(), grid.dp(), &grid.edp(), settings);
  }

  static RegistryOptions options(const GridLayout& layout) {
    RegistryOptions o;
    o.bucket_bytes = kBucketBytes;
    o.dp_size = layout.dp_size();
    o.edp_size = layout.edp_size();
    return o;
  }
};

// The global flat index of each local element of p, in local order.
std::vector<std::int64_t> global_indices(const Parameter& p) {
  const Shape &global = p.global_shape(), &local = p.local_shape();
  const std::size_t axes = global.size();
  std::vector<std::int64_t> start(axes, 0), at(axes, 0), out;
  for (const AxisSplit* split : {&p.spec().tp, &p.spec().ep})
    if (split->split()) start[std::size_t(split->axis)] = split->index * local[std::size_t(split->axis)];
  for (std::int64_t n = 0; n < p.numel(); ++n) {
    std::int64_t flat = 0;
    for (std::size_t a = 0; a < axes; ++a) flat = flat * global[a] + start[a] + at[a];
    out.push_back(flat);
    for (std::size_t a = axes; a-- > 0;) {
      if (++at[a] < local[a]) break;
      at[a] = 0;
    }
  }
  return out;
}

// Exact in f32: quarters below 10^4. slot 0 master, 1 Adam m, 2 Adam v (positive).
double known_value(int param, std::int64_t global_index, int slot) {
  const double base = 1000.0 * (param + 1) + 0.25 * double(global_index);
  return slot == 0 ? base : slot == 1 ? -base : base + 0.5;
}

std::vector<double> expected_slice(const Parameter& p, int slot) {
  std::vector<double> out;
  for (std::int64_t g : global_indices(p)) out.push_back(known_value(p.index(), g, slot));
  return out;
}

// Host copies of a group's Adam state in the flat layout.
struct AdamState {
  OwnedTensor m, v;
  AdamState(Model& model, ReduceGroup group)
      : m({model.registry.group(group).numel}, DType::f32, Device::cpu),
        v({model.registry.group(group).numel}, DType::f32, Device::cpu) {
    fill_bytes(m, 0);
    fill_bytes(v, 0);
  }
  Tensor slot(const Parameter& p, int s) const { return (s == 1 ? m : v).view().slice_rows(p.offset(), p.numel()); }
};

void fill_known_values(Model& model) {
  for (const ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
    AdamState state(model, g);
    for (std::size_t i = 0; i < model.registry.size(); ++i) {
      const Parameter& p = model.registry[i];
      if (p.reduce_group() != g) continue;
      for (int s : {1, 2}) from_vector(state.slot(p, s), expected_slice(p, s));
    }
    model.optimizer->write_adam_state(g, state.m, state.v);
  }
  for (std::size_t i = 0; i < model.registry.size(); ++i) {
    const Parameter& p = model.registry[i];
    from_vector(p.master(), expected_slice(p, 0));
  }
}

void expect_known_values(Model& model) {
  for (const ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
    AdamState state(model, g);
    model.optimizer->read_adam_state(g, state.m, state.v);
    for (std::size_t i = 0; i < model.registry.size(); ++i) {
      const Parameter& p = model.registry[i];
      if (p.reduce_group() != g) continue;
      EXPECT_EQ(to_vector(state.slot(p, 1)), expected_slice(p, 1)) << p.name() << " adam_m";
      EXPECT_EQ(to_vector(state.slot(p, 2)), expected_slice(p, 2)) << p.name() << " adam_v";
    }
  }
  for (std::size_t i = 0; i < model.registry.size(); ++i) {
    const Parameter& p = model.registry[i];
    EXPECT_EQ(to_vector(p.master()), expected_slice(p, 0)) << p.name() << " master";
  }
}

CheckpointState sample_state(std::int64_t step) {
  CheckpointState state;
  state.step = step;
  state.data = {2, 5};
  state.seed = 4242;
  state.config_yaml = "model:\n  d_model: 16\n";
  return state;
}

struct Layout {
  int tp, ep;
};

// Every grid this world allows with kExperts experts.
std::vector<Layout> layouts(int world_size) {
  std::vector<Layout> out;
  for (int tp = 1; tp <= world_size; tp *= 2)
    for (int ep = 1; ep <= world_size / tp && ep <= kExperts; ep *= 2) out.push_back({tp, ep});
  return out;
}

std::string name(const Layout& l, bool zero1) {
  return "tp " + std::to_string(l.tp) + ", ep " + std::to_string(l.ep) + (zero1 ? ", zero1" : "");
}

TEST(Checkpoint, EveryShardRoundTripsAcrossLayouts) {
  SharedDir dir;
  const std::vector<Layout> all = layouts(world(Device::cpu).size());
  ASSERT_GE(all.size(), 3u);
  // Each layout saves once and loads once, from its neighbour; ZeRO-1 alternates on both sides.
  for (std::size_t k = 0; k < all.size(); ++k) {
    const Layout saved = all[k], loaded = all[(k + 1) % all.size()];
    const bool save_zero1 = k % 2 == 0, load_zero1 = k % 3 == 0;
    SCOPED_TRACE("saved at " + name(saved, save_zero1) + ", loaded at " + name(loaded, load_zero1));
    const std::int64_t step = 10 + std::int64_t(k);
    std::string path;
    {
      Model model(saved.tp, saved.ep, save_zero1);
      fill_known_values(model);
      path = save_checkpoint(dir.path(), 0, sample_state(step), model.registry, *model.optimizer);
    }
    EXPECT_EQ(path, checkpoint_path(dir.path(), step));
    Model model(loaded.tp, loaded.ep, load_zero1);
    const CheckpointState state = load_checkpoint(path, model.registry, *model.optimizer);
    EXPECT_EQ(state.step, step);
    EXPECT_EQ(state.data, (DataPosition{2, 5}));
    EXPECT_EQ(state.seed, 4242u);
    EXPECT_EQ(state.config_yaml, "model:\n  d_model: 16\n");
    expect_known_values(model);
  }
}

// Gradients are dyadic functions of the global index, the same on every replica, so averaging
// over any dp size is exact and AdamW sees the same inputs at every layout. Expert gradients are
// summed over edp but divided by dp (each ep rank's expert gradient covers tokens from all ep
// ranks), so they are scaled by ep here to average to the same value.
void train_step(Model& model, int step) {
  model.registry.zero_grads();
  for (std::size_t i = 0; i < model.registry.size(); ++i) {
    const Parameter& p = model.registry[i];
    if (!p.trainable()) continue;
    const double scale = p.reduce_group() == ReduceGroup::edp ? model.grid.layout().ep_size() : 1.0;
    std::vector<double> grad;
    for (std::int64_t g : global_indices(p))
      grad.push_back(scale * double((g * 7 + p.index() * 3 + step) % 9 - 4) / 8);
    from_vector(p.grad(), grad);
  }
  for (std::size_t i = model.registry.size(); i-- > 0;)
    if (model.registry[i].trainable()) model.optimizer->grad_ready(model.registry[i]);
  model.optimizer->step(1e-2f, step, 0.0f);
}

TEST(Checkpoint, ResumingAtAnotherLayoutTakesTheSameNextStep) {
  SharedDir before, after;
  const int world_size = world(Device::cpu).size();
  const Layout first{1, 2}, second{world_size, 1};
  {
    Model model(first.tp, first.ep, true);
    fill_known_values(model);
    for (int step = 1; step <= 2; ++step) train_step(model, step);
    save_checkpoint(before.path(), 1, sample_state(2), model.registry, *model.optimizer);
    train_step(model, 3);
    save_checkpoint(after.path(), 1, sample_state(3), model.registry, *model.optimizer);
  }
  Model resumed(second.tp, second.ep, false);
  EXPECT_EQ(load_checkpoint(latest_checkpoint(before.path()), resumed.registry, *resumed.optimizer).step, 2);
  train_step(resumed, 3);
  Model uninterrupted(second.tp, second.ep, false);
  load_checkpoint(latest_checkpoint(after.path()), uninterrupted.registry, *uninterrupted.optimizer);
  // The same elementwise AdamW on the same f32 inputs; only vectorised and scalar code paths
  // may round differently.
  auto expect_close = [](const std::vector<double>& x, const std::vector<double>& y, const std::string& what) {
    ASSERT_EQ(x.size(), y.size()) << what;
    for (std::size_t k = 0; k < x.size(); ++k)
      EXPECT_NEAR(x[k], y[k], 1e-6 * std::abs(y[k]) + 1e-9) << what << "[" << k << "]";
  };
  for (const ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp}) {
    AdamState a(resumed, g), b(uninterrupted, g);
    resumed.optimizer->read_adam_state(g, a.m, a.v);
    uninterrupted.optimizer->read_adam_state(g, b.m, b.v);
    expect_close(to_vector(a.m), to_vector(b.m), std::string("adam_m of ") + reduce_group_name(g));
    expect_close(to_vector(a.v), to_vector(b.v), std::string("adam_v of ") + reduce_group_name(g));
  }
  for (std::size_t i = 0; i < resumed.registry.size(); ++i)
    expect_close(to_vector(resumed.registry[i].master()), to_vector(uninterrupted.registry[i].master()),
                 resumed.registry[i].name());
}

TEST(Checkpoint, KeepsTheNewestAndIgnoresLeftoverTemporaries) {
  SharedDir dir;
  Model model(1, 1, false);
  fill_known_values(model);
  EXPECT_EQ(latest_checkpoint(dir.path()), "");
  EXPECT_EQ(latest_checkpoint(dir.path() + "/missing"), "");
  for (std::int64_t step : {1, 2, 3})
    save_checkpoint(dir.path(), 2, sample_state(step), model.registry, *model.optimizer);
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.path(), 1)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir.path(), 2)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir.path(), 3)));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.path(), 3) + ".tmp"));
  // A crash while writing step 9 leaves its temporary behind; the newest complete one is step 3.
  on_rank0([&] { std::ofstream(checkpoint_path(dir.path(), 9) + ".tmp") << "half a checkpoint"; });
  EXPECT_EQ(latest_checkpoint(dir.path()), checkpoint_path(dir.path(), 3));
  // Steps compare as numbers: step_10 is newer than step_3 although it sorts first by name.
  save_checkpoint(dir.path(), 2, sample_state(10), model.registry, *model.optimizer);
  EXPECT_EQ(latest_checkpoint(dir.path()), checkpoint_path(dir.path(), 10));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir.path(), 2)));
}

TEST(Checkpoint, CorruptFilesFailOnEveryRankNamingTheProblem) {
  SharedDir dir;
  Model model(1, 1, false);
  fill_known_values(model);
  const std::string path = save_checkpoint(dir.path(), 0, sample_state(20), model.registry, *model.optimizer);
  const std::string good = dir.path() + "/good.bytes";
  on_rank0([&] { fs::copy_file(path, good); });
  auto flip = [&](std::uint64_t at) {
    on_rank0([&] {
      fs::copy_file(good, path, fs::copy_options::overwrite_existing);
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(std::streamoff(at));
      const char byte = char(f.get() ^ 0x01);
      f.seekp(std::streamoff(at));
      f.put(byte);
    });
  };
  const std::string bytes = [&] {
    std::ifstream in(good, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  const CheckpointHeader header =
      decode_checkpoint_header(std::string_view(bytes).substr(0, checkpoint_header_bytes(bytes, bytes.size(), good)),
                               bytes.size(), good);
  // Entry 0 is verified by rank 0, entry 1 by rank 1: the error reaches every rank either way.
  flip(header.entries[0].slot_offset(0) + 12);
  expect_error([&] { load_checkpoint(path, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               path + ": checksum mismatch in parameter embed.weight (master): the tensor data is corrupt");
  flip(header.entries[1].slot_offset(1) + 4);
  expect_error([&] { load_checkpoint(path, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               path + ": checksum mismatch in parameter blocks.0.norm.weight (adam_m)");
  flip(40);
  expect_error([&] { load_checkpoint(path, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               path + ": header checksum mismatch");
  flip(fs::file_size(good) - 1);
  expect_error([&] { load_checkpoint(path, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               path + ": checksum mismatch in the config text");
  on_rank0([&] {
    fs::copy_file(good, path, fs::copy_options::overwrite_existing);
    fs::resize_file(path, fs::file_size(good) - 100);
  });
  expect_error([&] { load_checkpoint(path, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               path + ": truncated: the file has");
  const std::string text = dir.path() + "/notes.txt";
  on_rank0([&] { std::ofstream(text) << "not a checkpoint at all, just some text\n"; });
  expect_error([&] { load_checkpoint(text, model.registry, *model.optimizer); }, ErrorKind::checkpoint,
               text + ": not a switchyard checkpoint");
  expect_error([&] { load_checkpoint(dir.path() + "/missing.ckpt", model.registry, *model.optimizer); },
               ErrorKind::checkpoint, dir.path() + "/missing.ckpt: cannot open");
  // The model is untouched by the failed loads, and the good file still loads.
  on_rank0([&] { fs::copy_file(good, path, fs::copy_options::overwrite_existing); });
  EXPECT_EQ(load_checkpoint(path, model.registry, *model.optimizer).step, 20);
  expect_known_values(model);
}

TEST(Checkpoint, ShapeMismatchNamesTheParameterAndBothShapes) {
  SharedDir dir;
  std::string path;
  {
    Model model(1, 1, false, 48);
    fill_known_values(model);
    path = save_checkpoint(dir.path(), 0, sample_state(20), model.registry, *model.optimizer);
  }
  Model wider(1, 1, false, 64);
  expect_error([&] { load_checkpoint(path, wider.registry, *wider.optimizer); }, ErrorKind::checkpoint,
               path + ": parameter blocks.0.attn.qkv.weight has shape [16, 48] in the checkpoint but [16, 64] in "
                      "the model");
}

}  // namespace
}  // namespace sy::test
