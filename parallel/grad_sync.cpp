// Bucketed gradient reduction with readiness tracking, overlapped with backward on the GPU.
#include "parallel/grad_sync.h"

#include "core/ops.h"

namespace sy {

std::vector<ShardSegment> shard_segments(const ParameterGroup& group, int rank) {
  SY_CHECK(rank >= 0 && rank < group.shard_parts)
      << "shard_segments: rank " << rank << " is not in a group of " << group.shard_parts;
  std::vector<ShardSegment> segments;
  std::int64_t shard_offset = 0;
  for (std::size_t b = 0; b < group.buckets.size(); ++b) {
    const GradientBucket& bucket = group.buckets[b];
    const std::int64_t n = bucket.numel / group.shard_parts;
    segments.push_back({int(b), bucket.offset + rank * n, shard_offset, n});
    shard_offset += n;
  }
  return segments;
}

GradSync::GradSync(ParameterRegistry& registry, Communicator& dp, Communicator* edp, bool zero1, StreamRef compute)
    : registry_(registry),
      zero1_(zero1),
      average_scale_(1.0f / float(dp.size())),
      compute_(compute),
      comm_stream_(registry.options().device == Device::cuda ? Stream::create() : Stream()),
      backward_done_(registry.options().device),
      comm_done_(registry.options().device) {
  SY_CHECK(registry.allocated()) << "GradSync: allocate the parameter registry first";
  const RegistryOptions& options = registry.options();
  Communicator* comms[2] = {&dp, edp};
  const int sizes[2] = {options.dp_size, options.edp_size};
  for (int g = 0; g < 2; ++g) {
    const ParameterGroup& group = registry.group(ReduceGroup(g));
    if (group.numel == 0) continue;
    Communicator* comm = comms[g];
    SY_CHECK(comm != nullptr) << "GradSync: parameters are reduced over " << reduce_group_name(ReduceGroup(g))
                              << " but no " << reduce_group_name(ReduceGroup(g)) << " communicator was given";
    SY_CHECK(comm->size() == sizes[g]) << "GradSync: the registry was planned for " << reduce_group_name(ReduceGroup(g))
                                       << " size " << sizes[g] << " but group " << comm->name() << " has "
                                       << comm->size() << " ranks";
    SY_CHECK(comm->device() == options.device) << "GradSync: group " << comm->name() << " moves "
                                               << device_name(comm->device()) << " tensors but parameters live on "
                                               << device_name(options.device);
    GroupState& s = groups_[g];
    s.comm = comm;
    s.segments = shard_segments(group, comm->rank());
    if (zero1_) {
      const std::int64_t n = group.numel / group.shard_parts;
      s.shard_storage = Storage(options.device, std::size_t(n) * sizeof(float));
      s.shard_grad = s.shard_storage.tensor({n}, DType::f32);
      fill_bytes(s.shard_grad, 0);
    }
  }
  reset_step();
}

Communicator& GradSync::communicator(ReduceGroup group) const {
  SY_CHECK(state(group).comm != nullptr) << "GradSync: no communicator reduces group " << reduce_group_name(group);
  return *state(group).comm;
}

std::int64_t GradSync::shard_numel(ReduceGroup group) const {
  const ParameterGroup& g = registry_.group(group);
  return g.numel / g.shard_parts;
}

void GradSync::reset_step() {
  ready_.assign(registry_.size(), 0);
  for (int g = 0; g < 2; ++g) {
    const ParameterGroup& group = registry_.group(ReduceGroup(g));
    groups_[g].unready.clear();
    for (const GradientBucket& bucket : group.buckets) groups_[g].unready.push_back(int(bucket.params.size()));
  }
}

void GradSync::grad_ready(const Parameter& param) {
  const int index = param.index();
  SY_CHECK(index < int(registry_.size()) && &registry_[std::size_t(index)] == &param)
      << "grad_ready: parameter " << param.name() << " belongs to another registry";
  SY_CHECK(param.trainable()) << "grad_ready: parameter " << param.name()
                              << " is frozen (reduce group none) and has no gradient to synchronise";
  SY_CHECK(!ready_[std::size_t(index)]) << "grad_ready: parameter " << param.name()
                                        << " was already reported ready in this step";
  ready_[std::size_t(index)] = 1;
  GroupState& s = groups_[int(param.reduce_group())];
  if (--s.unready[std::size_t(param.bucket())] == 0) reduce_bucket(param.reduce_group(), param.bucket());
}

// Averaging: the loss is the mean over the global batch, i.e. (1/dp) x the sum of the dp ranks'
// local mean losses, so a dense gradient is the dp sum scaled by 1/dp. An expert gradient is
// summed over edp only, yet it is scaled by the same 1/dp, not 1/edp: the all-to-all already
// brought every ep peer's tokens to this rank's experts, so the local expert gradient holds the
// contributions of all ep ranks of the slice (each under its own local-mean scaling), and the
// edp sum adds the remaining replicas. Together that is all dp ranks' tokens, as for dense.
void GradSync::reduce_bucket(ReduceGroup group_id, int bucket_index) {
  const ParameterGroup& group = registry_.group(group_id);
  const GradientBucket& bucket = group.buckets[std::size_t(bucket_index)];
  GroupState& s = groups_[int(group_id)];
  const StreamRef comm = comm_stream_.ref();
  backward_done_.record(compute_);
  backward_done_.wait_on(comm);
  const Tensor grads = group.grad.slice_rows(bucket.offset, bucket.numel);
  Tensor reduced = grads;
  if (zero1_) {
    const ShardSegment& segment = s.segments[std::size_t(bucket_index)];
    reduced = s.shard_grad.slice_rows(segment.shard_offset, segment.numel);
    s.comm->reduce_scatter(grads, reduced, ReduceOp::sum, comm);
  } else {
    s.comm->all_reduce(grads, ReduceOp::sum, comm);
  }
  if (average_scale_ != 1.0f) scale(reduced, average_scale_, reduced, comm);
  if (bucket_reduced_) bucket_reduced_(group_id, bucket_index, comm);
}

void GradSync::finish() {
  int missing = 0;
  const Parameter* first = nullptr;
  for (std::size_t i = 0; i < registry_.size(); ++i) {
    const Parameter& p = registry_[i];
    if (!p.trainable() || ready_[i]) continue;
    if (!first) first = &p;
    ++missing;
  }
  SY_CHECK(missing == 0) << "GradSync::finish: parameter " << first->name() << " was never reported ready"
                         << (missing > 1 ? " (and " + std::to_string(missing - 1) + " more)" : std::string())
                         << "; call grad_ready for every trainable parameter in backward";
  comm_done_.record(comm_stream_.ref());
  comm_done_.wait_on(compute_);
  reset_step();
}

}  // namespace sy
