// Dispatch and combine over expert parallelism. Dispatch permutes a rank's kept choices into
// expert order (the send side), exchanges per-expert counts over the ep group, and sends each
// (peer, expert) block of rows straight to its place in the owner's expert-major buffer (the
// expert side); combine is the exact inverse followed by the gate-weighted sum over the k
// choices. Backward mirrors both. Experts are stationary: rank p of the ep group owns experts
// [p L, (p + 1) L).
//
// Pipelining: every (peer, expert) block is cut into K pieces, and chunk j is piece j of every
// block. The expert side stores the chunks one after another, so chunk j's rows are contiguous
// and expert-major: while the experts compute chunk j, chunk j + 1 can be on the wire
// (moe/moe_layer.cpp runs that schedule). Expert side, chunk j: for local expert l, for source
// peer p, piece j of block (p, l). With K = 1 this is the plain expert-major layout.
//
// How rows move: a chunk's pieces go straight to their expert-side rows, L blocks per peer
// (Communicator::exchange). With K = 1 a peer's rows are one block on the send side, and they
// move as NCCL's all-to-all moves them fastest, one block per peer, into a source-major staging
// buffer that a device pass regroups (with one expert per rank the two orders coincide and the
// all-to-all goes straight between the sides). On 2 H200s the L-block exchange moved 30 MiB at
// 141 GB/s of bus bandwidth with L = 4 but 93 GB/s with L = 8 (bench/SCALING.md).
#pragma once

#include <cstdint>
#include <vector>

#include "core/phase_timer.h"
#include "core/storage.h"
#include "moe/permute.h"
#include "moe/routing.h"
#include "parallel/communicator.h"

namespace sy {

// Row counts of one forward, fixed by the routing and the counts exchange. Host vectors.
struct DispatchPlan {
  int peers = 1;              // P: ranks of the ep group
  int local_experts = 0;      // L = E / P
  std::int64_t capacity = 0;  // C, 0 for dropless
  int chunks = 1;             // K: 1 when P = 1 (nothing to overlap)
  std::vector<std::int64_t> send_rows_per_expert;   // [E]: this rank's rows for expert e (C each with capacity)
  std::vector<std::int64_t> recv_rows_per_block;    // [P * L]: rows from peer p for local expert l, at p L + l
  std::vector<std::int64_t> send_rows_per_peer;     // [P]: the whole exchange's counts (K = 1)
  std::vector<std::int64_t> recv_rows_per_peer;     // [P]
  std::vector<std::int64_t> rows_per_local_expert;  // [L]: all chunks together
  std::vector<std::int64_t> chunk_first_row;        // [K + 1]: chunk j is expert-side rows [first[j], first[j+1])
  std::vector<std::int64_t> chunk_rows_per_local_expert;  // [K * L]: the expert GEMMs' group sizes, chunk-major
  std::int64_t send_rows = 0;
  std::int64_t recv_rows = 0;
  Tensor offsets;      // [E + 1] i32 on the device: start row of each expert on the send side
  RegroupBlocks blocks;  // the expert side's P x L blocks, for the K = 1 regroup

  std::int64_t chunk_rows(int chunk) const {
    return chunk_first_row[std::size_t(chunk) + 1] - chunk_first_row[std::size_t(chunk)];
  }
};

// Piece j of K of a block of n rows starts at row n j / K (pieces differ by at most one row).
inline std::int64_t piece_start(std::int64_t n, int piece, int pieces) { return n * piece / pieces; }

// Builds the plan for `chunks` pieces per block (>= 1). Capacity mode needs no communication
// (every expert has C rows, padding included). Dropless exchanges counts with one all_to_all and
// reads them on the host: the one host synchronisation routing truly needs, since row counts size
// the exchange.
DispatchPlan plan_dispatch(const Routing& routing, Communicator& ep, int chunks, Arena& arena, StreamRef stream = {},
                           PhaseTimer* timer = nullptr);

// x [N, d] -> the send side [plan.send_rows, d] in expert order (from arena; capacity padding
// zeroed, so it stays finite and out of dW).
Tensor dispatch_permute(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Arena& arena,
                        StreamRef stream = {});
// Moves chunk `chunk` between the send side and the expert side: to_experts reads send-side rows
// and fills the owners' expert-side rows (dispatch forward, combine backward); !to_experts is
// the way back (combine forward, dispatch backward). Collective over ep.
void exchange_chunk(const DispatchPlan& plan, int chunk, bool to_experts, const Tensor& from, const Tensor& to,
                    Communicator& ep, StreamRef stream = {});

// The K = 1 exchange: like exchange_chunk, through `staging` ([plan.recv_rows, d] or more rows,
// source-major) with one block per peer and a regroup on the device. With one expert per rank
// the two orders coincide: one all-to-all straight between the sides, `staging` unused (it may be
// undefined). Collective over ep.
void exchange_whole(const DispatchPlan& plan, bool to_experts, const Tensor& from, const Tensor& to,
                    const Tensor& staging, Communicator& ep, StreamRef stream = {});
// exchange_whole's staging buffer for rows like `rows`, from the arena; undefined where the plan
// needs none (several chunks, or one expert per rank).
Tensor exchange_staging(const DispatchPlan& plan, const Tensor& rows, Arena& arena);

// The whole of dispatch and combine, one chunk after another without overlap (tests, and the
// pieces a pipelined layer runs). With one rank in the group the two sides coincide and nothing
// moves.
// x: [N, d] -> rows for this rank's experts, [plan.recv_rows, d] expert side (from arena).
// `timer` (optional) gets the phases "permute" and "all_to_all".
Tensor dispatch_forward(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                        Arena& arena, StreamRef stream = {}, PhaseTimer* timer = nullptr);
// Backward of dispatch: d_expert_in [plan.recv_rows, d] -> dx [N, d] (overwritten; dropped
// choices contribute nothing).
void dispatch_backward(const Tensor& d_expert_in, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& dx, StreamRef stream = {}, PhaseTimer* timer = nullptr);
// expert_out [plan.recv_rows, d] expert side -> out [N, d] = sum_j gate * y. Returns the rows as
// they came back, send side ([plan.send_rows, d], from arena): backward needs them for the gate
// gradient.
Tensor combine_forward(const Tensor& expert_out, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& out, StreamRef stream = {}, PhaseTimer* timer = nullptr);
// Backward of combine: dout [N, d] -> d_expert_out [plan.recv_rows, d] expert side (from arena)
// and dgate [N, k] f32 (overwritten).
Tensor combine_backward(const Tensor& dout, const Tensor& returned, const Routing& routing, const DispatchPlan& plan,
                        Communicator& ep, Arena& arena, const Tensor& dgate, StreamRef stream = {},
                        PhaseTimer* timer = nullptr);

}  // namespace sy
