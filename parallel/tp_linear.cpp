// Tensor-parallel linears: argument checks, then one or two GEMMs and at most one all-reduce.
// The all-reduce sits where the sharded computation yields partial sums: the row-parallel
// forward (each rank holds a slice of the reduction axis In) and the column-parallel backward
// (dx sums over the Out slices).
#include "parallel/tp_linear.h"

#include "core/ops.h"
#include "core/storage.h"

namespace sy {
namespace {

// x: [N, K] and weight: [M, K] of one float dtype, on the tp group's device.
void check_linear_inputs(const char* op, const Communicator& tp, const Tensor& x, const Tensor& weight) {
  SY_CHECK(x.dim() == 2) << op << ": x must be [N, features], got " << x.describe();
  SY_CHECK(weight.dim() == 2) << op << ": weight must be [out_features, in_features], got " << weight.describe();
  check_float(op, "x", x);
  check_dtype(op, "weight", weight, x.dtype());
  SY_CHECK(x.size(1) == weight.size(1)) << op << ": x has " << x.size(1) << " features but weight "
                                        << weight.describe() << " expects " << weight.size(1);
  SY_CHECK(x.device() == tp.device()) << op << ": tensors are on " << device_name(x.device()) << " but group "
                                      << tp.name() << " moves " << device_name(tp.device()) << " tensors";
}

// The gradients of a backward: dy: [N, M], dx like x, dweight like weight in f32.
void check_linear_grads(const char* op, const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor& dx,
                        const Tensor& dweight) {
  check_shape(op, "dy", dy, {x.size(0), weight.size(0)});
  check_dtype(op, "dy", dy, x.dtype());
  check_shape(op, "dx", dx, x.shape());
  check_dtype(op, "dx", dx, x.dtype());
  check_shape(op, "dweight", dweight, weight.shape());
  check_dtype(op, "dweight", dweight, DType::f32);
  check_same_device(op, {&x, &weight, &dy, &dx, &dweight});
}

}  // namespace

void column_parallel_forward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& y,
                             StreamRef stream) {
  const char* op = "column_parallel_forward";
  check_linear_inputs(op, tp, x, weight);
  check_shape(op, "y", y, {x.size(0), weight.size(0)});
  check_dtype(op, "y", y, x.dtype());
  check_same_device(op, {&x, &weight, &y});
  gemm(x, weight, y, false, true, 1.0f, 0.0f, stream);  // y = x W^T
}

void column_parallel_backward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& dy,
                              const Tensor& dx, const Tensor& dweight, GradMode mode, StreamRef stream) {
  const char* op = "column_parallel_backward";
  check_linear_inputs(op, tp, x, weight);
  check_linear_grads(op, x, weight, dy, dx, dweight);
  gemm(dy, x, dweight, true, false, 1.0f, grad_beta(mode), stream);  // dweight (+)= dy^T x, f32 output
  gemm(dy, weight, dx, false, false, 1.0f, 0.0f, stream);  // this rank's Out slice of dy W
  tp.all_reduce(dx, ReduceOp::sum, stream);
}

void row_parallel_forward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& y,
                          StreamRef stream) {
  const char* op = "row_parallel_forward";
  check_linear_inputs(op, tp, x, weight);
  check_shape(op, "y", y, {x.size(0), weight.size(0)});
  check_dtype(op, "y", y, x.dtype());
  check_same_device(op, {&x, &weight, &y});
  gemm(x, weight, y, false, true, 1.0f, 0.0f, stream);  // partial sum over this rank's In slice
  tp.all_reduce(y, ReduceOp::sum, stream);
}

void row_parallel_backward(Communicator& tp, const Tensor& x, const Tensor& weight, const Tensor& dy,
                           const Tensor& dx, const Tensor& dweight, GradMode mode, StreamRef stream) {
  const char* op = "row_parallel_backward";
  check_linear_inputs(op, tp, x, weight);
  check_linear_grads(op, x, weight, dy, dx, dweight);
  gemm(dy, x, dweight, true, false, 1.0f, grad_beta(mode), stream);  // dweight (+)= dy^T x, f32 output
  gemm(dy, weight, dx, false, false, 1.0f, 0.0f, stream);  // dx = dy W
}

void copy_weight_shard(const Tensor& full, const Tensor& shard, ShardAxis axis, int index, int parts,
                       StreamRef stream) {
  const char* op = "copy_weight_shard";
  SY_CHECK(full.dim() == 2) << op << ": full must be [out_features, in_features], got " << full.describe();
  check_contiguous(op, "full", full);
  check_contiguous(op, "shard", shard);
  SY_CHECK(parts >= 1 && index >= 0 && index < parts) << op << ": part " << index << " of " << parts
                                                      << " does not exist";
  const bool by_rows = axis == ShardAxis::rows;
  const std::int64_t split_size = by_rows ? full.size(0) : full.size(1);
  SY_CHECK(split_size % parts == 0) << op << ": " << parts << " parts do not divide the "
                                    << (by_rows ? "rows" : "columns") << " of " << full.describe();
  const std::int64_t part_size = split_size / parts;
  check_shape(op, "shard", shard, by_rows ? Shape{part_size, full.size(1)} : Shape{full.size(0), part_size});
  check_dtype(op, "shard", shard, full.dtype());
  if (by_rows) {
    copy(shard, full.slice_rows(index * part_size, part_size), stream);
    return;
  }
  for (std::int64_t row = 0; row < full.size(0); ++row) {
    copy(shard.select(row), full.select(row).slice_rows(index * part_size, part_size), stream);
  }
}

}  // namespace sy
