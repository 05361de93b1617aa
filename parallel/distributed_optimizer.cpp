// DistributedOptimizer: the norm and AdamW ranges are planned once from the registry layout; a
// step is then a fixed sequence of sum_squares, one all_reduce, adamw_update and all_gathers.
#include "parallel/distributed_optimizer.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace sy {
namespace {

// Where a parameter sits in its group's flat buffer, the alignment and bucket padding after it
// included, so the extents of a group tile its whole buffer.
struct Extent {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  const Parameter* param = nullptr;
};

std::vector<Extent> parameter_extents(const ParameterRegistry& registry, const ParameterGroup& group) {
  std::vector<Extent> extents;
  for (const GradientBucket& bucket : group.buckets) {
    for (std::size_t i = 0; i < bucket.params.size(); ++i) {
      const Parameter& p = registry[std::size_t(bucket.params[i])];
      const bool last = i + 1 == bucket.params.size();
      const std::int64_t end =
          last ? bucket.offset + bucket.numel : registry[std::size_t(bucket.params[i + 1])].offset();
      extents.push_back({p.offset(), end, &p});
    }
  }
  return extents;
}

// A window of the flat buffer and where it lands in the buffer the ranges index (the flat buffer
// itself, or the rank's ZeRO-1 shard).
struct Window {
  std::int64_t flat_offset = 0;
  std::int64_t target_offset = 0;
  std::int64_t numel = 0;
};

}  // namespace

DistributedOptimizer::DistributedOptimizer(ParameterRegistry& registry, Communicator& world, Communicator& dp,
                                           Communicator* edp, OptimizerSettings settings, StreamRef compute)
    : registry_(registry),
      world_(world),
      settings_(settings),
      sync_(registry, dp, edp, settings.zero1, compute),
      compute_(compute),
      sum_squares_({1}, DType::f32, registry.options().device),
      sum_squares_host_({1}, DType::f32, Device::cpu) {
  const Device device = registry.options().device;
  // The squares wait for the step's tail: summed on the synchronisation stream beside backward
  // (as each bucket was reduced) they took the compute stream's bandwidth and made the step
  // 1.4% slower on an H200 (bench/NOTES.md, change 23). The buckets are summed in the order they
  // were reduced, which is the same every step.
  sync_.set_bucket_reduced([this](ReduceGroup id, int bucket, StreamRef) { reduced_.push_back({id, bucket}); });
  SY_CHECK(world.device() == device) << "DistributedOptimizer: group " << world.name() << " moves "
                                     << device_name(world.device()) << " tensors but parameters live on "
                                     << device_name(device);
  for (int g = 0; g < 2; ++g) {
    const ReduceGroup id = ReduceGroup(g);
    const ParameterGroup& group = registry.group(id);
    if (group.numel == 0) continue;
    GroupPlan& plan = plans_[g];
    const std::int64_t n = settings.zero1 ? sync_.shard_numel(id) : group.numel;
    auto zeroed = [&](Storage& storage, DType dtype) {
      storage = Storage(device, std::size_t(n) * dtype_size(dtype));
      Tensor t = storage.tensor({n}, dtype);
      fill_bytes(t, 0);
      return t;
    };
    plan.m = zeroed(plan.m_storage, DType::f32);
    plan.v = zeroed(plan.v_storage, DType::f32);
    if (settings.zero1) {
      plan.master_stage = zeroed(plan.master_stage_storage, DType::f32);
      if (group.compute.defined()) plan.copy_stage = zeroed(plan.copy_stage_storage, group.compute.dtype());
    }

    const std::vector<Extent> extents = parameter_extents(registry, group);
    // The windows' elements of the selected parameters, as ranges of the target buffer; with
    // by_decay each range has its parameters' weight decay, else all have 0. Neighbours with the
    // same decay merge.
    auto ranges = [&](const std::vector<Window>& windows, const std::function<bool(const Parameter&)>& selected,
                      bool by_decay) {
      std::vector<AdamWRange> out;
      for (const Window& w : windows) {
        for (const Extent& e : extents) {
          const std::int64_t lo = std::max(e.begin, w.flat_offset), hi = std::min(e.end, w.flat_offset + w.numel);
          if (lo >= hi || !selected(*e.param)) continue;
          const std::int64_t target = w.target_offset + (lo - w.flat_offset);
          const float decay = by_decay && e.param->spec().weight_decay ? settings.weight_decay : 0.0f;
          if (!out.empty() && out.back().offset + out.back().numel == target && out.back().weight_decay == decay) {
            out.back().numel += hi - lo;
          } else {
            out.push_back({target, hi - lo, decay});
          }
        }
      }
      return out;
    };
    // Each rank counts its ZeRO-1 slice of every bucket in both modes: after the reduction all
    // replicas in the group hold the same gradient, so the slices count each element once.
    std::vector<Window> shard_windows, update_windows;
    for (const ShardSegment& s : sync_.segments(id))
      shard_windows.push_back({s.flat_offset, settings.zero1 ? s.shard_offset : s.flat_offset, s.numel});
    update_windows = settings.zero1 ? shard_windows : std::vector<Window>{{0, 0, group.numel}};
    // Across tp, split parameters hold distinct elements (each tp rank counts its own) and
    // replicated ones hold the same gradient (tp rank 0 counts it). Across ep, expert parameters
    // are distinct experts, so every ep rank counts its own: the world sum adds them up.
    plan.norm_ranges.resize(group.buckets.size());
    for (std::size_t i = 0; i < shard_windows.size(); ++i)
      plan.norm_ranges[std::size_t(sync_.segments(id)[i].bucket)] = ranges(
          {shard_windows[i]}, [](const Parameter& p) { return p.spec().tp.split() || p.spec().tp.index == 0; },
          false);
    plan.update_ranges = ranges(update_windows, [](const Parameter&) { return true; }, true);
  }
}

// Runs after GradSync::finish, so every bucket is reduced and visible to the compute stream. One
// sum_squares over the counted slices of every bucket, in the order the buckets were reduced
// (backward's order, the same every step: the sum is deterministic).
void DistributedOptimizer::reduce_grad_squares() {
  std::vector<Tensor> parts;
  for (const ReducedBucket& r : reduced_) {
    const Tensor& grads = settings_.zero1 ? sync_.shard_grad(r.group) : registry_.group(r.group).grad;
    for (const AdamWRange& range : plans_[int(r.group)].norm_ranges[std::size_t(r.bucket)])
      parts.push_back(grads.slice_rows(range.offset, range.numel));
  }
  reduced_.clear();
  fill_bytes(sum_squares_, 0, compute_);
  sum_squares(parts, sum_squares_, compute_);
  world_.all_reduce(sum_squares_, ReduceOp::sum, compute_);
}

float DistributedOptimizer::grad_norm() {
  copy(sum_squares_host_, sum_squares_, compute_);  // waits for the stream
  return std::sqrt(sum_squares_host_.view().ptr<float>()[0]);
}

void DistributedOptimizer::update_group(ReduceGroup id, const AdamWParams& hp) {
  const ParameterGroup& group = registry_.group(id);
  GroupPlan& plan = plans_[int(id)];
  const bool zero1 = settings_.zero1;
  if (zero1) {
    for (const ShardSegment& s : sync_.segments(id))
      copy(plan.master_stage.slice_rows(s.shard_offset, s.numel), group.master.slice_rows(s.flat_offset, s.numel),
           compute_);
  }
  const Tensor& params = zero1 ? plan.master_stage : group.master;
  const Tensor& grads = zero1 ? sync_.shard_grad(id) : group.grad;
  const Tensor& copies = zero1 ? plan.copy_stage : group.compute;
  adamw_update_ranges(params, grads, plan.m, plan.v, copies, plan.update_ranges, hp, compute_);
  if (!zero1) return;
  // Every rank updated its slice of each bucket; gathering the slices rebuilds the whole bucket.
  Communicator& comm = sync_.communicator(id);
  for (const ShardSegment& s : sync_.segments(id)) {
    const GradientBucket& bucket = group.buckets[std::size_t(s.bucket)];
    comm.all_gather(plan.master_stage.slice_rows(s.shard_offset, s.numel),
                    group.master.slice_rows(bucket.offset, bucket.numel), compute_);
    if (plan.copy_stage.defined())
      comm.all_gather(plan.copy_stage.slice_rows(s.shard_offset, s.numel),
                      group.compute.slice_rows(bucket.offset, bucket.numel), compute_);
  }
}

void DistributedOptimizer::step(float lr, int step_number, float max_grad_norm) {
  SY_CHECK(step_number >= 1) << "DistributedOptimizer::step: step_number is 1-based, got " << step_number;
  sync_.finish();
  mark_phase(timer_, "grad_sync");
  reduce_grad_squares();
  AdamWParams hp;
  hp.lr = lr;
  hp.beta1 = settings_.beta1;
  hp.beta2 = settings_.beta2;
  hp.eps = settings_.eps;
  hp.step = step_number;
  if (max_grad_norm > 0.0f) {
    hp.clip_sum_squares = sum_squares_;
    hp.max_grad_norm = max_grad_norm;
  }
  for (const ReduceGroup id : {ReduceGroup::dp, ReduceGroup::edp})
    if (registry_.group(id).numel > 0) update_group(id, hp);
}

void DistributedOptimizer::read_adam_state(ReduceGroup id, const Tensor& m, const Tensor& v) {
  const ParameterGroup& group = check_adam_state_args("read_adam_state", id, m, v);
  if (group.numel == 0) return;
  const GroupPlan& plan = plans_[int(id)];
  if (!settings_.zero1) {
    copy(m, plan.m, compute_);
    copy(v, plan.v, compute_);
    synchronize(compute_);
    return;
  }
  // One bucket at a time through a bucket-sized buffer, so saving never holds the whole
  // unsharded state on the device.
  std::int64_t largest = 0;
  for (const GradientBucket& bucket : group.buckets) largest = std::max(largest, bucket.numel);
  OwnedTensor gathered({largest}, DType::f32, registry_.options().device);
  Communicator& comm = sync_.communicator(id);
  for (const ShardSegment& s : sync_.segments(id)) {
    const GradientBucket& bucket = group.buckets[std::size_t(s.bucket)];
    const Tensor whole = gathered.view().slice_rows(0, bucket.numel);
    for (const auto& [shard, full] : {std::pair{plan.m, m}, std::pair{plan.v, v}}) {
      comm.all_gather(shard.slice_rows(s.shard_offset, s.numel), whole, compute_);
      copy(full.slice_rows(bucket.offset, bucket.numel), whole, compute_);
    }
  }
  synchronize(compute_);
}

void DistributedOptimizer::write_adam_state(ReduceGroup id, const Tensor& m, const Tensor& v) {
  const ParameterGroup& group = check_adam_state_args("write_adam_state", id, m, v);
  if (group.numel == 0) return;
  const GroupPlan& plan = plans_[int(id)];
  if (!settings_.zero1) {
    copy(plan.m, m, compute_);
    copy(plan.v, v, compute_);
  } else {
    for (const ShardSegment& s : sync_.segments(id)) {
      copy(plan.m.slice_rows(s.shard_offset, s.numel), m.slice_rows(s.flat_offset, s.numel), compute_);
      copy(plan.v.slice_rows(s.shard_offset, s.numel), v.slice_rows(s.flat_offset, s.numel), compute_);
    }
  }
  synchronize(compute_);
}

const ParameterGroup& DistributedOptimizer::check_adam_state_args(const char* op, ReduceGroup id, const Tensor& m,
                                                                  const Tensor& v) const {
  SY_CHECK(id != ReduceGroup::none) << "DistributedOptimizer::" << op << ": frozen parameters have no Adam state";
  const ParameterGroup& group = registry_.group(id);
  for (const Tensor* t : {&m, &v})
    SY_CHECK(t->dtype() == DType::f32 && t->numel() == group.numel && t->is_contiguous())
        << "DistributedOptimizer::" << op << ": group " << reduce_group_name(id) << " needs contiguous ["
        << group.numel << "] f32 buffers, got " << t->describe();
  return group;
}

}  // namespace sy
