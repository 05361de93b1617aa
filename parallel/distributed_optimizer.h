// DistributedOptimizer: one training step's tail. Finishes gradient synchronisation, computes
// the global gradient norm (the buckets' shares summed on the compute stream, in the order the
// buckets were reduced), clips, and applies AdamW, either to the whole local buffers or, under
// ZeRO-1, to this rank's shard (Adam state exists for the shard only) followed by an all_gather
// of the updated masters and compute copies.
//
// Communicators: world (the one all_reduce of the squared norm), dp (dense gradients; its size
// is the averaging divisor) and edp (expert gradients; null when there are none). The tp and ep
// position of each parameter comes from its registry entry, so no tp or ep group is needed.
#pragma once

#include <cstdint>
#include <vector>

#include "core/ops.h"
#include "core/phase_timer.h"
#include "core/storage.h"
#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/parameter.h"

namespace sy {

struct OptimizerSettings {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // for parameters whose spec has weight_decay = true
  bool zero1 = false;         // shard Adam state over dp / edp
};

class DistributedOptimizer {
 public:
  DistributedOptimizer(ParameterRegistry& registry, Communicator& world, Communicator& dp, Communicator* edp,
                       OptimizerSettings settings, StreamRef compute = {});
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // Backward reports finished gradients here (see GradSync::grad_ready).
  void grad_ready(const Parameter& param) { sync_.grad_ready(param); }
  GradSync& grad_sync() { return sync_; }
  // Optional: step() marks "grad_sync" once the compute stream has waited for the gradient
  // reductions, so that phase holds the part of them backward did not hide.
  void set_phase_timer(PhaseTimer* timer) { timer_ = timer; }

  // Finishes the gradient sync, forms the global L2 norm of the averaged gradients on the device,
  // scales them by min(1, max_grad_norm / (norm + 1e-6)) inside AdamW (max_grad_norm <= 0: no
  // clipping) and updates masters and compute copies. step_number is 1-based. Everything is
  // enqueued on the compute stream: the host does not wait for the norm. Gradients are left as
  // they are, and every read of them (here and in the gradient sync) is ordered before the
  // compute stream's next work, so the next step's first backward may overwrite them (GradMode).
  void step(float lr, int step_number, float max_grad_norm);
  // The last step's gradient norm (before clipping); waits for the compute stream.
  float grad_norm();

  // Adam state of a reduce group (dp or edp) in the group's flat layout: [group numel] f32 on any
  // device, each parameter's local m and v at its offset(), as the optimizer holds them without
  // ZeRO-1. This is what checkpoints save and restore; the step count is not state here, since
  // step() is told it. Under ZeRO-1, read gathers the shards over the group (collective over dp or
  // edp) and write keeps this rank's shard of the full buffers (no communication).
  void read_adam_state(ReduceGroup group, const Tensor& m, const Tensor& v);
  void write_adam_state(ReduceGroup group, const Tensor& m, const Tensor& v);

 private:
  // Ranges of a buffer (flat or shard), each with one weight decay (unused by the norm).
  struct GroupPlan {
    std::vector<std::vector<AdamWRange>> norm_ranges;  // per bucket: gradient elements this rank counts in the norm
    std::vector<AdamWRange> update_ranges;             // every element, by weight decay
    Storage m_storage, v_storage, master_stage_storage, copy_stage_storage;
    Tensor m, v;                       // [flat numel], or [shard numel] under ZeRO-1
    Tensor master_stage, copy_stage;   // ZeRO-1: the shard being updated, then gathered
  };

  // Every bucket reduced this step, in order: their squares are added in that order.
  struct ReducedBucket {
    ReduceGroup group;
    int bucket;
  };
  // sum_squares_ = the squared global gradient norm, on the device (summed over the world).
  void reduce_grad_squares();
  const ParameterGroup& check_adam_state_args(const char* op, ReduceGroup group, const Tensor& m,
                                              const Tensor& v) const;
  void update_group(ReduceGroup group, const AdamWParams& hp);

  ParameterRegistry& registry_;
  Communicator& world_;
  OptimizerSettings settings_;
  GradSync sync_;
  PhaseTimer* timer_ = nullptr;
  StreamRef compute_;
  GroupPlan plans_[2];  // dp, edp
  std::vector<ReducedBucket> reduced_;  // this step's buckets, in the order they were reduced
  OwnedTensor sum_squares_;       // [1] f32 on the parameters' device
  OwnedTensor sum_squares_host_;  // [1] f32 on the CPU
};

}  // namespace sy
