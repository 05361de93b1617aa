// Gradient synchronisation: backward reports each finished parameter gradient; as soon as every
// parameter of a bucket is in, the bucket is summed over its reduce group (all_reduce, or
// reduce_scatter into this rank's shard under ZeRO-1) and averaged, on a communication stream
// that waits for the compute stream, so the reduction overlaps the rest of backward. On the MPI
// backend (CPU tensors) each reduction completes when it is issued.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/storage.h"
#include "core/stream.h"
#include "parallel/communicator.h"
#include "parallel/parameter.h"
#include "parallel/stream_event.h"

namespace sy {

// This rank's ZeRO-1 slice of one bucket: elements [rank * numel, (rank + 1) * numel) of it.
// The slices of all buckets, back to back, form the rank's shard buffers (gradient, Adam state).
struct ShardSegment {
  int bucket = 0;
  std::int64_t flat_offset = 0;   // into the group's flat buffers
  std::int64_t shard_offset = 0;  // into the rank's shard buffers
  std::int64_t numel = 0;
};
std::vector<ShardSegment> shard_segments(const ParameterGroup& group, int rank);

class GradSync {
 public:
  // dp sums dense gradients and its size is the averaging divisor for every gradient; edp sums
  // expert gradients (may be null when no parameter is reduced over edp). Their sizes must be the
  // registry's dp_size and edp_size. `compute` is the stream backward runs on.
  GradSync(ParameterRegistry& registry, Communicator& dp, Communicator* edp, bool zero1, StreamRef compute = {});
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // `param`'s gradient is complete for this step (with gradient accumulation: report it in the
  // last micro-batch's backward only). Starts its bucket's reduction when it is the last one.
  void grad_ready(const Parameter& param);
  // Called on the communication stream after each bucket's reduction (and averaging), with the
  // group and bucket: the optimizer adds the bucket's squared norm there, under backward.
  using BucketReduced = std::function<void(ReduceGroup group, int bucket, StreamRef comm)>;
  void set_bucket_reduced(BucketReduced callback) { bucket_reduced_ = std::move(callback); }
  // Waits for every bucket (the compute stream waits on the communication stream; the host does
  // not block) and starts the next step's bookkeeping. Every trainable parameter must be ready.
  void finish();

  bool zero1() const { return zero1_; }
  ParameterRegistry& registry() const { return registry_; }
  Communicator& communicator(ReduceGroup group) const;
  const std::vector<ShardSegment>& segments(ReduceGroup group) const { return state(group).segments; }
  // ZeRO-1 only: this rank's reduced, averaged gradient shard of a group, [shard numel] f32.
  const Tensor& shard_grad(ReduceGroup group) const { return state(group).shard_grad; }
  std::int64_t shard_numel(ReduceGroup group) const;
  StreamRef compute_stream() const { return compute_; }
  StreamRef comm_stream() const { return comm_stream_.ref(); }

 private:
  struct GroupState {
    Communicator* comm = nullptr;
    std::vector<ShardSegment> segments;
    Storage shard_storage;
    Tensor shard_grad;
    std::vector<int> unready;  // per bucket: parameters not yet reported this step
  };
  const GroupState& state(ReduceGroup group) const { return groups_[int(group)]; }
  void reset_step();
  void reduce_bucket(ReduceGroup group, int bucket);

  ParameterRegistry& registry_;
  bool zero1_;
  float average_scale_;  // 1 / dp size
  StreamRef compute_;
  Stream comm_stream_;  // created for cuda only; the null stream on the CPU
  StreamEvent backward_done_;
  StreamEvent comm_done_;
  GroupState groups_[kReduceGroups];  // none stays empty
  std::vector<char> ready_;  // per parameter, this step
  BucketReduced bucket_reduced_;
};

}  // namespace sy
