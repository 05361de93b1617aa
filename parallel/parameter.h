// The parameter registry: every trainable tensor with its global name, global shape, how it is
// split over tensor and expert parallelism, and which group reduces its gradient. Storage is
// planned once: per reduce group one flat buffer each for fp32 masters, fp32 gradients and the
// optional compute copy, laid out so gradient buckets are contiguous slices (no packing copy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/stream.h"
#include "core/storage.h"
#include "core/tensor.h"

namespace sy {

// Which group sums a parameter's gradient: dense parameters over dp, expert parameters over edp
// (the replicas of the same experts). `none` is a frozen parameter: it has masters (and a compute
// copy) but no gradient, is never synchronised, updated or counted in the gradient norm.
enum class ReduceGroup : std::uint8_t { dp, edp, none };
inline constexpr int kReduceGroups = 3;
const char* reduce_group_name(ReduceGroup group);

// One axis of the global tensor cut into `parts` equal pieces, this rank holding piece `index`.
// axis = -1: not split (every rank holds the whole tensor along this kind of parallelism).
struct AxisSplit {
  int axis = -1;
  int parts = 1;
  int index = 0;
  bool split() const { return axis >= 0; }
};

struct ParameterSpec {
  std::string name;     // global, e.g. "blocks.3.attn.qkv.weight"
  Shape global_shape;   // the unsharded tensor, as a checkpoint stores it
  AxisSplit tp;         // Megatron column/row split; unsplit = replicated over tp
  AxisSplit ep;         // experts [E, ...] split over ep ranks (axis 0); only with ReduceGroup::edp
  ReduceGroup reduce = ReduceGroup::dp;
  bool weight_decay = true;  // false for norms and biases
};

class Parameter {
 public:
  Parameter(ParameterSpec spec, int index);

  const std::string& name() const { return spec_.name; }
  const ParameterSpec& spec() const { return spec_; }
  const Shape& global_shape() const { return spec_.global_shape; }
  const Shape& local_shape() const { return local_shape_; }
  std::int64_t numel() const { return numel_; }  // local elements
  ReduceGroup reduce_group() const { return spec_.reduce; }
  bool trainable() const { return spec_.reduce != ReduceGroup::none; }
  int index() const { return index_; }  // registration order = forward order

  // This rank's slice, viewed with the local shape. Valid after ParameterRegistry::allocate.
  const Tensor& master() const;   // fp32 master weights
  const Tensor& grad() const;     // fp32; a step's first backward overwrites it, later ones add
  const Tensor& compute() const;  // the compute copy (e.g. bf16); undefined when the registry has none

  // Placement in the group's flat buffers (elements) and the bucket holding the gradient.
  std::int64_t offset() const { return offset_; }
  int bucket() const { return bucket_; }

 private:
  friend class ParameterRegistry;
  void check_allocated() const;

  ParameterSpec spec_;
  Shape local_shape_;
  std::int64_t numel_ = 0;
  int index_ = 0;
  std::int64_t offset_ = -1;
  int bucket_ = -1;
  Tensor master_, grad_, compute_;
};

// A contiguous slice of a group's flat gradient buffer, reduced by one collective.
struct GradientBucket {
  std::int64_t offset = 0;  // elements into the flat buffer
  std::int64_t numel = 0;   // padded: a multiple of kShardAlignElements x group size
  std::vector<int> params;  // registry indices in layout (reverse registration) order
};

// The flat buffers of one reduce group.
struct ParameterGroup {
  ReduceGroup group = ReduceGroup::dp;
  int shard_parts = 1;        // the group's size: every bucket divides into this many shards
  std::int64_t numel = 0;     // flat elements, padding included
  std::vector<GradientBucket> buckets;  // in the order backward completes them
  Storage master_storage, grad_storage, compute_storage;
  Tensor master, grad, compute;  // [numel] views; grad undefined for `none`, compute without copies
};

struct RegistryOptions {
  Device device = Device::cpu;
  bool compute_copy = false;       // keep a compute-dtype copy of every parameter
  DType compute_dtype = DType::bf16;
  std::size_t bucket_bytes = std::size_t(25) << 20;  // fp32 gradient bytes per bucket (about)
  int dp_size = 1;   // buckets of dense gradients are padded to shard over dp (ZeRO-1)
  int edp_size = 1;  // and expert gradients over edp
};

class ParameterRegistry {
 public:
  // Each parameter starts at a multiple of this (256-byte f32 / 128-byte bf16 aligned), and each
  // rank's shard of a bucket does too, so vector loads and cuBLAS see aligned bases.
  static constexpr std::int64_t kAlignElements = 64;

  explicit ParameterRegistry(RegistryOptions options);
  ParameterRegistry(const ParameterRegistry&) = delete;
  ParameterRegistry& operator=(const ParameterRegistry&) = delete;

  // Registration order must be forward order. The returned reference stays valid.
  Parameter& add(ParameterSpec spec);
  // Plans the flat layout and buckets, allocates (masters, gradients and compute copies zeroed,
  // padding included), and binds every parameter's tensors. No add() after this.
  void allocate();
  bool allocated() const { return allocated_; }

  const RegistryOptions& options() const { return options_; }
  std::size_t size() const { return params_.size(); }
  Parameter& operator[](std::size_t index) { return params_[index]; }
  const Parameter& operator[](std::size_t index) const { return params_[index]; }
  Parameter& at(const std::string& name);
  const ParameterGroup& group(ReduceGroup group) const;

  // Zeroes every gradient, padding included (padding must stay zero: it is reduced and counted).
  // allocate() already zeroes them, and training needs no zeroing after that: a step's first
  // backward overwrites each parameter's gradient and never writes padding, whose zeros the
  // gradient sync's all-reduce only sums. For code that fills gradients itself.
  void zero_grads(StreamRef stream = {});
  // Copies every master into its compute copy (after initialisation or loading a checkpoint).
  void refresh_compute_copies(StreamRef stream = {});

 private:
  void plan_group(ParameterGroup& group);

  RegistryOptions options_;
  std::deque<Parameter> params_;  // deque: add() never moves earlier parameters
  std::unordered_map<std::string, int> index_by_name_;
  ParameterGroup groups_[kReduceGroups];
  bool allocated_ = false;
};

}  // namespace sy
