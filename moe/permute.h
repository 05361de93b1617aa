// Row movements of MoE dispatch and combine, each a CPU reference and a CUDA kernel behind one
// function (dispatch by device, as core/ops.h). Rows are d-wide token vectors; a "choice" is
// (token n, choice j) of the router's top-k, placed at row offsets[expert] + slot in the
// expert-ordered send buffer (routing.h: slot -1 means dropped).
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace sy {

// offsets: [E + 1] i32, offsets[e] = first row of expert e in the send buffer:
// e * capacity in capacity mode, else the exclusive prefix sum of counts [E] i32.
void moe_expert_offsets(const Tensor& counts, std::int64_t capacity, const Tensor& offsets, StreamRef stream = {});

// send[offsets[e] + slot] = x[n] for every kept choice. x: [N, d]; expert, slot: [N, k] i32;
// send: [rows, d] (rows no kept choice writes are left as they are: zero them first when padding
// matters).
void moe_scatter_rows(const Tensor& x, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                      const Tensor& send, StreamRef stream = {});

// dx[n] = sum over kept choices j of rows[offsets[e] + slot] (0 if all dropped): the backward of
// moe_scatter_rows. dx: [N, d] overwritten.
void moe_gather_rows_sum(const Tensor& rows, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                         const Tensor& dx, StreamRef stream = {});

// out[n] = sum over kept choices j of gate[n, j] * y[offsets[e] + slot]. gate: [N, k] f32 (f64
// when the rows are f64, in CPU gradient checks);
// y: [rows, d]; out: [N, d] overwritten.
void moe_combine(const Tensor& y, const Tensor& expert, const Tensor& slot, const Tensor& offsets,
                 const Tensor& gate, const Tensor& out, StreamRef stream = {});
// Backward of moe_combine: dy[offsets[e] + slot] = gate[n, j] * dout[n] for kept choices (rows
// of dy no choice owns are zeroed); dgate[n, j] = dout[n] . y[row] (0 if dropped).
void moe_combine_backward(const Tensor& dout, const Tensor& y, const Tensor& expert, const Tensor& slot,
                          const Tensor& offsets, const Tensor& gate, const Tensor& dy, const Tensor& dgate,
                          StreamRef stream = {});

// The P x L row blocks moe_regroup moves: counts ([P, L] i32 on the rows' device, the rows that
// source rank p holds for local expert l), or, with counts undefined, uniform_rows rows in every
// block (capacity mode: the sizes are known on the host, so no device copy and no wait).
struct RegroupBlocks {
  int peers = 0, locals = 0;
  Tensor counts;
  std::int64_t uniform_rows = 0;

  static RegroupBlocks of(const Tensor& counts);
  static RegroupBlocks uniform(int peers, int locals, std::int64_t rows) { return {peers, locals, Tensor(), rows}; }
};

// Reorders row blocks between source-major and expert-major order. Source-major: blocks (p, l)
// in order p, then l (how all_to_all delivers them); expert-major: blocks in order l, then p
// (what one batched or grouped GEMM per expert wants). to_expert_major selects the direction; in
// and out hold the blocks' rows (or more: extra rows are left as they are).
void moe_regroup(const Tensor& in, const RegroupBlocks& blocks, const Tensor& out, bool to_expert_major,
                 StreamRef stream = {});

}  // namespace sy
