// Parameter registry: spec checks, the flat layout with its gradient buckets, and allocation.
#include "parallel/parameter.h"

#include <utility>

#include "core/ops.h"

namespace sy {
namespace {

std::int64_t round_up(std::int64_t n, std::int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

void check_split(const ParameterSpec& spec, const char* kind, const AxisSplit& split) {
  SY_CHECK(split.parts >= 1 && split.index >= 0 && split.index < split.parts)
      << "parameter " << spec.name << ": " << kind << " index " << split.index << " is not in [0, " << split.parts
      << ")";
  if (!split.split()) return;
  const int dims = int(spec.global_shape.size());
  SY_CHECK(split.axis < dims) << "parameter " << spec.name << ": " << kind << " axis " << split.axis
                              << " does not exist in global shape " << shape_string(spec.global_shape);
  const std::int64_t extent = spec.global_shape[std::size_t(split.axis)];
  SY_CHECK(extent % split.parts == 0) << "parameter " << spec.name << ": " << kind << " splits axis " << split.axis
                                      << " of size " << extent << " into " << split.parts
                                      << " parts, which does not divide it";
}

}  // namespace

const char* reduce_group_name(ReduceGroup group) {
  switch (group) {
    case ReduceGroup::dp: return "dp";
    case ReduceGroup::edp: return "edp";
    case ReduceGroup::none: return "none";
  }
  return "?";
}

Parameter::Parameter(ParameterSpec spec, int index) : spec_(std::move(spec)), index_(index) {
  SY_CHECK(!spec_.name.empty()) << "a parameter needs a name";
  SY_CHECK(!spec_.global_shape.empty() && int(spec_.global_shape.size()) <= Tensor::kMaxDims)
      << "parameter " << spec_.name << ": global shape must have 1 to " << Tensor::kMaxDims << " axes, got "
      << shape_string(spec_.global_shape);
  for (std::int64_t extent : spec_.global_shape)
    SY_CHECK(extent > 0) << "parameter " << spec_.name << ": global shape " << shape_string(spec_.global_shape)
                         << " has an empty axis";
  check_split(spec_, "tp", spec_.tp);
  check_split(spec_, "ep", spec_.ep);
  SY_CHECK(!(spec_.tp.split() && spec_.ep.split() && spec_.tp.axis == spec_.ep.axis))
      << "parameter " << spec_.name << ": tp and ep both split axis " << spec_.tp.axis;
  // An expert split means other ep ranks hold other experts; only edp ranks hold the same ones.
  SY_CHECK(!spec_.ep.split() || spec_.reduce == ReduceGroup::edp)
      << "parameter " << spec_.name << " is split over ep, so its gradient must be reduced over edp, not "
      << reduce_group_name(spec_.reduce);
  local_shape_ = spec_.global_shape;
  for (const AxisSplit* split : {&spec_.tp, &spec_.ep})
    if (split->split()) local_shape_[std::size_t(split->axis)] /= split->parts;
  numel_ = 1;
  for (std::int64_t extent : local_shape_) numel_ *= extent;
}

void Parameter::check_allocated() const {
  SY_CHECK(offset_ >= 0) << "parameter " << name() << " has no storage yet: call ParameterRegistry::allocate first";
}

const Tensor& Parameter::master() const {
  check_allocated();
  return master_;
}

const Tensor& Parameter::grad() const {
  check_allocated();
  SY_CHECK(trainable()) << "parameter " << name() << " is frozen (reduce group none) and has no gradient";
  return grad_;
}

const Tensor& Parameter::compute() const {
  check_allocated();
  return compute_;
}

ParameterRegistry::ParameterRegistry(RegistryOptions options) : options_(options) {
  SY_CHECK(options_.dp_size >= 1 && options_.edp_size >= 1)
      << "ParameterRegistry: dp and edp sizes must be at least 1, got " << options_.dp_size << " and "
      << options_.edp_size;
  SY_CHECK(options_.compute_dtype == DType::bf16 || options_.compute_dtype == DType::f32)
      << "ParameterRegistry: the compute copy must be bf16 or f32, got " << dtype_name(options_.compute_dtype);
  const int parts[kReduceGroups] = {options_.dp_size, options_.edp_size, 1};
  for (int g = 0; g < kReduceGroups; ++g) {
    groups_[g].group = ReduceGroup(g);
    groups_[g].shard_parts = parts[g];
  }
}

Parameter& ParameterRegistry::add(ParameterSpec spec) {
  SY_CHECK(!allocated_) << "ParameterRegistry: cannot register " << spec.name
                        << " after allocate(); register every parameter first";
  SY_CHECK(!index_by_name_.contains(spec.name)) << "ParameterRegistry: parameter " << spec.name
                                                << " is registered twice";
  const int index = int(params_.size());
  params_.emplace_back(std::move(spec), index);
  index_by_name_.emplace(params_.back().name(), index);
  return params_.back();
}

Parameter& ParameterRegistry::at(const std::string& name) {
  auto it = index_by_name_.find(name);
  SY_CHECK(it != index_by_name_.end()) << "ParameterRegistry: no parameter named " << name;
  return params_[std::size_t(it->second)];
}

const ParameterGroup& ParameterRegistry::group(ReduceGroup group) const { return groups_[int(group)]; }

// Buckets fill in reverse registration order, the order backward completes gradients. A bucket
// closes before a parameter that would take it past bucket_bytes (a parameter larger than that
// gets a bucket of its own), then pads to a multiple of the group size so each rank's ZeRO-1
// shard of it is an equal, aligned slice.
void ParameterRegistry::plan_group(ParameterGroup& group) {
  const std::int64_t limit = std::int64_t(options_.bucket_bytes / sizeof(float));
  const std::int64_t bucket_multiple = kAlignElements * group.shard_parts;
  GradientBucket current;
  std::int64_t used = 0;
  auto close = [&] {
    if (current.params.empty()) return;
    current.numel = round_up(used, bucket_multiple);
    group.numel += current.numel;
    group.buckets.push_back(std::move(current));
    current = GradientBucket{};
    current.offset = group.numel;
    used = 0;
  };
  for (std::size_t i = params_.size(); i-- > 0;) {
    Parameter& p = params_[i];
    if (p.reduce_group() != group.group) continue;
    const std::int64_t extent = round_up(p.numel(), kAlignElements);
    if (!current.params.empty() && used + extent > limit) close();
    p.offset_ = current.offset + used;
    p.bucket_ = int(group.buckets.size());
    current.params.push_back(int(i));
    used += extent;
  }
  close();
}

void ParameterRegistry::allocate() {
  SY_CHECK(!allocated_) << "ParameterRegistry: allocate() called twice";
  for (ParameterGroup& group : groups_) {
    plan_group(group);
    if (group.numel == 0) continue;
    const Device device = options_.device;
    group.master_storage = Storage(device, std::size_t(group.numel) * sizeof(float));
    group.master = group.master_storage.tensor({group.numel}, DType::f32);
    fill_bytes(group.master, 0);
    if (group.group != ReduceGroup::none) {
      group.grad_storage = Storage(device, std::size_t(group.numel) * sizeof(float));
      group.grad = group.grad_storage.tensor({group.numel}, DType::f32);
      fill_bytes(group.grad, 0);
    }
    if (options_.compute_copy) {
      group.compute_storage = Storage(device, std::size_t(group.numel) * dtype_size(options_.compute_dtype));
      group.compute = group.compute_storage.tensor({group.numel}, options_.compute_dtype);
      fill_bytes(group.compute, 0);
    }
  }
  for (Parameter& p : params_) {
    const ParameterGroup& group = groups_[int(p.reduce_group())];
    auto view = [&](const Tensor& flat) {
      return flat.defined() ? flat.slice_rows(p.offset_, p.numel()).reshape(p.local_shape()) : Tensor();
    };
    p.master_ = view(group.master);
    p.grad_ = view(group.grad);
    p.compute_ = view(group.compute);
  }
  allocated_ = true;
}

void ParameterRegistry::zero_grads(StreamRef stream) {
  SY_CHECK(allocated_) << "ParameterRegistry: zero_grads before allocate()";
  for (const ParameterGroup& group : groups_)
    if (group.grad.defined()) fill_bytes(group.grad, 0, stream);
}

void ParameterRegistry::refresh_compute_copies(StreamRef stream) {
  SY_CHECK(allocated_) << "ParameterRegistry: refresh_compute_copies before allocate()";
  for (const ParameterGroup& group : groups_) {
    if (!group.compute.defined()) continue;
    if (group.compute.dtype() == DType::f32) {
      copy(group.compute, group.master, stream);
    } else {
      cast(group.master, group.compute, stream);
    }
  }
}

}  // namespace sy
