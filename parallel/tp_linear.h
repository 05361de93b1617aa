// Tensor-parallel linear layers (Megatron style) over the tp group, forward and backward, built
// from core ops and the communicator, so they run wherever those do (CPU tensors with MPI, GPU
// tensors with NCCL). A column-parallel linear followed by a row-parallel one (an MLP, attention
// projections) needs one all-reduce in forward and one in backward.
//
// Weights are [out_features, in_features] as in torch (y = x W^T). Axes: N rows (tokens),
// In / Out the full feature sizes, tp the group size. Activations and weights share a dtype
// (f32 or bf16; f64 on CPU); dweight is f32, overwritten or added to by a GradMode, the
// convention of core/ops.h.
// Nothing here allocates: the caller passes every output.
#pragma once

#include "core/ops.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace sy {

// ---- column-parallel: output features split over tp -----------------------------------------
// x: [N, In] (the same on every tp rank); weight: [Out/tp, In], rows [rank * Out/tp, (rank + 1)
// * Out/tp) of the full weight; y: [N, Out/tp], this rank's columns of x W^T. No communication.
void column_parallel_forward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& y,
                             StreamRef stream = {});
// dy: [N, Out/tp]; dx: [N, In] (written) = dy W summed over tp, complete on every rank;
// dweight: [Out/tp, In] f32 (+)= dy^T x.
void column_parallel_backward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& dy,
                              const Tensor& dx, const Tensor& dweight, GradMode mode, StreamRef stream = {});

// ---- row-parallel: input features split over tp ---------------------------------------------
// x: [N, In/tp], this rank's columns of the input (a column-parallel output); weight:
// [Out, In/tp], columns [rank * In/tp, (rank + 1) * In/tp) of the full weight; y: [N, Out] =
// sum over tp of x W^T, complete on every rank.
void row_parallel_forward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& y,
                          StreamRef stream = {});
// dy: [N, Out] (the same on every tp rank); dx: [N, In/tp] (written) = dy W;
// dweight: [Out, In/tp] f32 (+)= dy^T x. No communication.
void row_parallel_backward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& dy,
                           const Tensor& dx, const Tensor& dweight, GradMode mode, StreamRef stream = {});

// ---- shards ---------------------------------------------------------------------------------
// How a [Out, In] weight is split: by rows (column-parallel) or by columns (row-parallel).
enum class ShardAxis { rows, columns };

// Copies part `index` of `parts` of full: [Out, In] into shard: [Out/parts, In] (rows) or
// [Out, In/parts] (columns). Any devices and the same dtype; for setup and checkpoints, not the
// step (a column shard is copied row by row).
void copy_weight_shard(const Tensor& full, const Tensor& shard, ShardAxis axis, int index, int parts,
                       StreamRef stream = {});

}  // namespace sy
