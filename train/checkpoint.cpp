// Checkpoint save and load over MPI-IO. Each tensor slot is one collective transfer through a
// subarray file view (the rank's tp/ep block of the global tensor), so MPI can aggregate the
// strided pieces of tp-split parameters; checksums are computed from the file itself, each rank
// reading whole tensors round-robin, so what is verified is what reached the disk.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "core/storage.h"
#include "parallel/mpi_runtime.h"
#include "train/checkpoint_format.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kChunkBytes = std::uint64_t(64) << 20;  // bounds the memory of checksum reads

// The ranks of the job saving or loading (set for the duration of one call by JobScope): every
// collective below runs over them, so jobs running side by side in one mpirun never meet.
MPI_Comm g_job = MPI_COMM_WORLD;

class JobScope {
 public:
  explicit JobScope(MPI_Comm comm) : previous_(g_job) { g_job = comm; }
  ~JobScope() { g_job = previous_; }
  JobScope(const JobScope&) = delete;
  JobScope& operator=(const JobScope&) = delete;

 private:
  MPI_Comm previous_;
};

int world_rank() {
  int rank = 0;
  SY_MPI(MPI_Comm_rank(g_job, &rank));
  return rank;
}

int world_size() {
  int size = 1;
  SY_MPI(MPI_Comm_size(g_job, &size));
  return size;
}

// Runs `step` on every rank; if it failed anywhere, every rank raises the error of the lowest
// failing rank, so a bad file or a failed rename stops all ranks with one message instead of
// leaving the others waiting in the next collective.
void on_every_rank(const std::function<void()>& step) {
  std::optional<Error> error;
  try {
    step();
  } catch (const Error& e) {
    error = e;
  } catch (const std::exception& e) {
    error = Error(ErrorKind::io, "rank " + std::to_string(error_rank()) + ": " + e.what());
  }
  const int size = world_size();
  int first = error ? world_rank() : size;
  SY_MPI(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, g_job));
  if (first == size) return;
  std::string message = error ? error->what() : "";
  int header[2] = {error ? int(error->kind()) : 0, int(message.size())};
  SY_MPI(MPI_Bcast(header, 2, MPI_INT, first, g_job));
  message.resize(std::size_t(header[1]));
  SY_MPI(MPI_Bcast(message.data(), header[1], MPI_CHAR, first, g_job));
  throw Error(ErrorKind(header[0]), message);
}

// An open MPI file; closing is collective, like opening.
class MpiFile {
 public:
  MpiFile(const std::string& path, int mode, ErrorKind kind) {
    on_every_rank([&] {
      const int status = MPI_File_open(g_job, path.c_str(), mode, MPI_INFO_NULL, &handle_);
      SY_INPUT_CHECK(kind, status == MPI_SUCCESS) << path << ": cannot open: " << mpi_error_text(status);
    });
  }
  ~MpiFile() {
    if (handle_ != MPI_FILE_NULL) MPI_File_close(&handle_);
  }
  MpiFile(const MpiFile&) = delete;
  MpiFile& operator=(const MpiFile&) = delete;

  MPI_File handle() const { return handle_; }
  void close() { SY_MPI(MPI_File_close(&handle_)); }

 private:
  MPI_File handle_ = MPI_FILE_NULL;
};

class SubarrayType {
 public:
  // The rank's block of `p`'s global tensor: its tp and ep pieces, the full extent elsewhere.
  explicit SubarrayType(const Parameter& p) {
    const Shape& global = p.global_shape();
    const Shape& local = p.local_shape();
    const int axes = int(global.size());
    int sizes[Tensor::kMaxDims], subsizes[Tensor::kMaxDims], starts[Tensor::kMaxDims];
    for (int a = 0; a < axes; ++a) {
      SY_CHECK(global[std::size_t(a)] <= INT_MAX) << "checkpoint: parameter " << p.name() << " has an axis of "
                                                  << global[std::size_t(a)] << " elements, more than MPI-IO counts";
      sizes[a] = int(global[std::size_t(a)]);
      subsizes[a] = int(local[std::size_t(a)]);
      starts[a] = 0;
    }
    for (const AxisSplit* split : {&p.spec().tp, &p.spec().ep})
      if (split->split()) starts[split->axis] = split->index * subsizes[split->axis];
    SY_MPI(MPI_Type_create_subarray(axes, sizes, subsizes, starts, MPI_ORDER_C, MPI_FLOAT, &type_));
    SY_MPI(MPI_Type_commit(&type_));
  }
  ~SubarrayType() { MPI_Type_free(&type_); }
  SubarrayType(const SubarrayType&) = delete;
  SubarrayType& operator=(const SubarrayType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Collective: moves this rank's block of one tensor slot between `local` ([local numel] f32 on
// the host) and the file at `offset`. Ranks that take no part still join, with a count of 0.
void transfer_block(MPI_File file, std::uint64_t offset, const Parameter& p, const Tensor& local, bool active,
                    bool write) {
  SY_CHECK(p.numel() <= INT_MAX) << "checkpoint: parameter " << p.name() << " has " << p.numel()
                                 << " local elements, more than one MPI-IO call moves";
  const SubarrayType block(p);
  SY_MPI(MPI_File_set_view(file, MPI_Offset(offset), MPI_FLOAT, block.get(), "native", MPI_INFO_NULL));
  const int count = active ? int(p.numel()) : 0;
  MPI_Status status;
  if (write) {
    SY_MPI(MPI_File_write_at_all(file, 0, local.data(), count, MPI_FLOAT, &status));
  } else {
    SY_MPI(MPI_File_read_at_all(file, 0, local.data(), count, MPI_FLOAT, &status));
  }
}

void byte_view(MPI_File file) {
  SY_MPI(MPI_File_set_view(file, 0, MPI_BYTE, MPI_BYTE, "native", MPI_INFO_NULL));
}

// Reads [offset, offset + bytes) with independent reads; `consume` sees it in chunks.
void read_bytes(MPI_File file, std::uint64_t offset, std::uint64_t bytes, const std::string& path,
                const std::function<void(const char*, std::size_t)>& consume) {
  std::vector<char> chunk(std::size_t(std::min(bytes, kChunkBytes)));
  for (std::uint64_t done = 0; done < bytes;) {
    const int n = int(std::min(bytes - done, kChunkBytes));
    MPI_Status status;
    SY_MPI(MPI_File_read_at(file, MPI_Offset(offset + done), chunk.data(), n, MPI_BYTE, &status));
    int got = 0;
    SY_MPI(MPI_Get_count(&status, MPI_BYTE, &got));
    SY_INPUT_CHECK(ErrorKind::checkpoint, got == n)
        << path << ": truncated: reading " << n << " bytes at " << offset + done << " returned " << got;
    consume(chunk.data(), std::size_t(n));
    done += std::uint64_t(n);
  }
}

std::uint64_t file_checksum(MPI_File file, std::uint64_t offset, std::uint64_t bytes, const std::string& path) {
  Fnv1a64 hash;
  read_bytes(file, offset, bytes, path, [&](const char* p, std::size_t n) { hash.update(p, n); });
  return hash.value();
}

std::string read_string(MPI_File file, std::uint64_t offset, std::uint64_t bytes, const std::string& path) {
  std::string out;
  out.reserve(std::size_t(bytes));
  read_bytes(file, offset, bytes, path, [&](const char* p, std::size_t n) { out.append(p, n); });
  return out;
}

// This rank's state in the registry's flat layout, on the host: masters per reduce group and
// Adam m and v for the trainable groups. MPI-IO reads and writes these.
struct HostState {
  OwnedTensor master[kReduceGroups];
  OwnedTensor m[2], v[2];

  explicit HostState(const ParameterRegistry& registry) {
    for (int g = 0; g < kReduceGroups; ++g) {
      const std::int64_t n = registry.group(ReduceGroup(g)).numel;
      master[g] = zeroed(n);
      if (g < 2) {
        m[g] = zeroed(n);
        v[g] = zeroed(n);
      }
    }
  }
  // Slot 0 is the master, 1 and 2 Adam m and v: [local numel] f32.
  Tensor slot(const Parameter& p, int slot) const {
    const int g = int(p.reduce_group());
    const OwnedTensor& flat = slot == 0 ? master[g] : slot == 1 ? m[g] : v[g];
    return flat.view().slice_rows(p.offset(), p.numel());
  }

 private:
  static OwnedTensor zeroed(std::int64_t n) {
    OwnedTensor t({n}, DType::f32, Device::cpu);
    fill_bytes(t, 0);  // padding between parameters must stay zero: it is reduced and updated
    return t;
  }
};

int slots_of(const Parameter& p) { return p.trainable() ? kMaxCheckpointSlots : 1; }

// Which rank writes a parameter: replicas over dp (edp for experts) leave it to index 0, and of
// the tp ranks the one with tp index 0 writes an unsplit parameter; split pieces are disjoint.
class WriterChoice {
 public:
  WriterChoice(const ParameterRegistry& registry, DistributedOptimizer& optimizer) {
    for (const ReduceGroup g : {ReduceGroup::dp, ReduceGroup::edp})
      if (registry.group(g).numel > 0) replica_[int(g)] = optimizer.grad_sync().communicator(g).rank();
    // Frozen parameters are replicated like dense ones.
    replica_[int(ReduceGroup::none)] = replica_[int(ReduceGroup::dp)];
  }
  bool writes(const Parameter& p) const {
    return replica_[int(p.reduce_group())] == 0 && (p.spec().tp.split() || p.spec().tp.index == 0);
  }

 private:
  int replica_[kReduceGroups] = {};
};

void check_optimizer(const ParameterRegistry& registry, DistributedOptimizer& optimizer, const char* op) {
  SY_CHECK(&optimizer.grad_sync().registry() == &registry)
      << op << ": the optimizer was built for another parameter registry";
}

CheckpointHeader plan_header(const ParameterRegistry& registry, const CheckpointState& state) {
  CheckpointHeader header;
  header.step = state.step;
  header.data_epoch = state.data.epoch;
  header.data_step = state.data.step;
  header.seed = state.seed;
  // Rank 0's config text is saved; the others need its length for the file size.
  std::uint64_t config_bytes = state.config_yaml.size();
  SY_MPI(MPI_Bcast(&config_bytes, 1, MPI_UINT64_T, 0, g_job));
  header.config_bytes = config_bytes;
  for (std::size_t i = 0; i < registry.size(); ++i) {
    const Parameter& p = registry[i];
    CheckpointEntry e;
    e.name = p.name();
    e.shape = p.global_shape();
    e.slots = slots_of(p);
    header.entries.push_back(std::move(e));
  }
  plan_checkpoint_layout(header);
  return header;
}

std::int64_t step_of(const fs::path& file) {
  const std::string name = file.filename().string();
  const std::string prefix = "step_", suffix = ".ckpt";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

// Complete checkpoints in dir, newest first.
std::vector<std::pair<std::int64_t, fs::path>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<std::int64_t, fs::path>> found;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    const std::int64_t step = step_of(entry.path());
    if (step >= 0 && entry.is_regular_file()) found.emplace_back(step, entry.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// Makes a rename durable: the directory entry itself must reach the disk.
void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  SY_INPUT_CHECK(ErrorKind::io, fd >= 0) << dir << ": cannot open the directory to sync it";
  const int status = ::fsync(fd);
  ::close(fd);
  SY_INPUT_CHECK(ErrorKind::io, status == 0) << dir << ": fsync of the directory failed";
}

// Rank 0, after the new checkpoint is in place.
void publish(const std::string& tmp, const std::string& path, const std::string& dir, int keep) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  SY_INPUT_CHECK(ErrorKind::io, !ec) << "cannot rename " << tmp << " to " << path << ": " << ec.message();
  sync_directory(dir);
  if (keep <= 0) return;
  const auto found = list_checkpoints(dir);
  for (std::size_t i = std::size_t(keep); i < found.size(); ++i) {
    fs::remove(found[i].second, ec);
    SY_INPUT_CHECK(ErrorKind::io, !ec) << "cannot remove old checkpoint " << found[i].second.string() << ": "
                                       << ec.message();
  }
}

// Every registered parameter must be in the checkpoint with the model's global shape (and Adam
// state when trainable), and the checkpoint must hold nothing the model lacks.
void match_registry(const CheckpointHeader& header, const ParameterRegistry& registry, const std::string& path) {
  for (std::size_t i = 0; i < registry.size(); ++i) {
    const Parameter& p = registry[i];
    const CheckpointEntry* e = header.find(p.name());
    SY_INPUT_CHECK(ErrorKind::checkpoint, e != nullptr)
        << path << ": parameter " << p.name() << " of the model is not in the checkpoint";
    SY_INPUT_CHECK(ErrorKind::checkpoint, e->shape == p.global_shape())
        << path << ": parameter " << p.name() << " has shape " << shape_string(e->shape)
        << " in the checkpoint but " << shape_string(p.global_shape()) << " in the model";
    SY_INPUT_CHECK(ErrorKind::checkpoint, e->slots >= slots_of(p))
        << path << ": parameter " << p.name() << " is trainable but the checkpoint has no Adam state for it";
  }
  for (const CheckpointEntry& e : header.entries) {
    bool known = false;
    for (std::size_t i = 0; i < registry.size() && !known; ++i) known = registry[i].name() == e.name;
    SY_INPUT_CHECK(ErrorKind::checkpoint, known)
        << path << ": parameter " << e.name << " is in the checkpoint but not in the model";
  }
}

}  // namespace

std::string checkpoint_path(const std::string& dir, std::int64_t step) {
  return (fs::path(dir) / ("step_" + std::to_string(step) + ".ckpt")).string();
}

std::string save_checkpoint(const std::string& dir, int keep, const CheckpointState& state,
                            const ParameterRegistry& registry, DistributedOptimizer& optimizer, MPI_Comm job) {
  const JobScope scope(job);
  check_optimizer(registry, optimizer, "save_checkpoint");
  SY_CHECK(state.step >= 0) << "save_checkpoint: step must be >= 0, got " << state.step;
  const std::string path = checkpoint_path(dir, state.step), tmp = path + ".tmp";
  const int rank = world_rank(), size = world_size();
  CheckpointHeader header = plan_header(registry, state);
  on_every_rank([&] {
    if (rank != 0) return;
    std::error_code ec;
    fs::create_directories(dir, ec);
    SY_INPUT_CHECK(ErrorKind::io, !ec) << dir << ": cannot create the checkpoint directory: " << ec.message();
    fs::remove(tmp, ec);  // a previous attempt's leftover
  });

  HostState host(registry);
  for (int g = 0; g < kReduceGroups; ++g) {
    const ReduceGroup id = ReduceGroup(g);
    if (registry.group(id).numel == 0) continue;
    copy(host.master[g], registry.group(id).master);
    if (id != ReduceGroup::none) optimizer.read_adam_state(id, host.m[g], host.v[g]);
  }
  device_synchronize();

  MpiFile file(tmp, MPI_MODE_CREATE | MPI_MODE_RDWR, ErrorKind::io);
  SY_MPI(MPI_File_set_size(file.handle(), MPI_Offset(header.file_bytes)));
  const WriterChoice writers(registry, optimizer);
  for (std::size_t i = 0; i < registry.size(); ++i) {
    const Parameter& p = registry[i];
    const CheckpointEntry& e = header.entries[i];
    for (int s = 0; s < e.slots; ++s)
      transfer_block(file.handle(), e.slot_offset(s), p, host.slot(p, s), writers.writes(p), true);
  }
  // sync, barrier, sync: MPI's rule for reading what other ranks wrote through the same file.
  byte_view(file.handle());
  SY_MPI(MPI_File_sync(file.handle()));
  SY_MPI(MPI_Barrier(g_job));
  SY_MPI(MPI_File_sync(file.handle()));

  std::vector<std::uint64_t> checksums(header.entries.size() * kMaxCheckpointSlots, 0);
  for (std::size_t i = std::size_t(rank); i < header.entries.size(); i += std::size_t(size)) {
    const CheckpointEntry& e = header.entries[i];
    for (int s = 0; s < e.slots; ++s)
      checksums[i * kMaxCheckpointSlots + std::size_t(s)] =
          file_checksum(file.handle(), e.slot_offset(s), e.slot_bytes(), tmp);
  }
  // Each checksum comes from one rank and is zero elsewhere.
  SY_MPI(MPI_Allreduce(MPI_IN_PLACE, checksums.data(), int(checksums.size()), MPI_UINT64_T, MPI_BXOR,
                       g_job));
  for (std::size_t i = 0; i < header.entries.size(); ++i)
    for (int s = 0; s < header.entries[i].slots; ++s)
      header.entries[i].checksums[s] = checksums[i * kMaxCheckpointSlots + std::size_t(s)];

  if (rank == 0) {
    header.config_checksum = fnv1a64(state.config_yaml);
    const std::string bytes = encode_checkpoint_header(header);
    MPI_Status status;
    SY_MPI(MPI_File_write_at(file.handle(), 0, bytes.data(), int(bytes.size()), MPI_BYTE, &status));
    SY_MPI(MPI_File_write_at(file.handle(), MPI_Offset(header.config_offset), state.config_yaml.data(),
                             int(state.config_yaml.size()), MPI_BYTE, &status));
  }
  SY_MPI(MPI_File_sync(file.handle()));
  file.close();
  on_every_rank([&] {
    if (rank == 0) publish(tmp, path, dir, keep);
  });
  return path;
}

CheckpointState load_checkpoint(const std::string& path, ParameterRegistry& registry,
                                DistributedOptimizer& optimizer, MPI_Comm job) {
  const JobScope scope(job);
  check_optimizer(registry, optimizer, "load_checkpoint");
  const int rank = world_rank(), size = world_size();
  MpiFile file(path, MPI_MODE_RDONLY, ErrorKind::checkpoint);
  CheckpointHeader header;
  CheckpointState state;
  // Every rank reads the same header bytes and reaches the same verdict; agreeing anyway keeps
  // an I/O error on one rank from stranding the others.
  on_every_rank([&] {
    MPI_Offset file_bytes = 0;
    SY_MPI(MPI_File_get_size(file.handle(), &file_bytes));
    const std::uint64_t total = std::uint64_t(file_bytes);
    const std::string fixed =
        read_string(file.handle(), 0, std::min<std::uint64_t>(total, kCheckpointFixedBytes), path);
    const std::uint64_t header_bytes = checkpoint_header_bytes(fixed, total, path);
    header = decode_checkpoint_header(read_string(file.handle(), 0, header_bytes, path), total, path);
    state.config_yaml = read_string(file.handle(), header.config_offset, header.config_bytes, path);
    SY_INPUT_CHECK(ErrorKind::checkpoint, fnv1a64(state.config_yaml) == header.config_checksum)
        << path << ": checksum mismatch in the config text: the file is corrupt";
    match_registry(header, registry, path);
  });
  on_every_rank([&] {
    for (std::size_t i = std::size_t(rank); i < header.entries.size(); i += std::size_t(size)) {
      const CheckpointEntry& e = header.entries[i];
      for (int s = 0; s < e.slots; ++s)
        SY_INPUT_CHECK(ErrorKind::checkpoint,
                       file_checksum(file.handle(), e.slot_offset(s), e.slot_bytes(), path) == e.checksums[s])
            << path << ": checksum mismatch in parameter " << e.name << " (" << checkpoint_slot_name(s)
            << "): the tensor data is corrupt";
    }
  });

  HostState host(registry);
  for (std::size_t i = 0; i < registry.size(); ++i) {
    const Parameter& p = registry[i];
    const CheckpointEntry& e = *header.find(p.name());
    for (int s = 0; s < slots_of(p); ++s)
      transfer_block(file.handle(), e.slot_offset(s), p, host.slot(p, s), true, false);
  }
  file.close();
  for (int g = 0; g < kReduceGroups; ++g) {
    const ReduceGroup id = ReduceGroup(g);
    if (registry.group(id).numel == 0) continue;
    copy(registry.group(id).master, host.master[g]);
    if (id != ReduceGroup::none) optimizer.write_adam_state(id, host.m[g], host.v[g]);
  }
  registry.refresh_compute_copies();
  device_synchronize();

  state.step = header.step;
  state.data = {header.data_epoch, header.data_step};
  state.seed = header.seed;
  return state;
}

std::string latest_checkpoint(const std::string& dir) {
  const auto found = list_checkpoints(dir);
  return found.empty() ? "" : found.front().second.string();
}

}  // namespace sy
