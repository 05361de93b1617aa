// Dispatch and combine over expert parallelism. Dispatch permutes a rank's kept choices into
// expert order, exchanges per-expert counts over the ep group, and all-to-alls the rows to the
// ranks that own the experts, regrouped expert-major for the expert GEMMs; combine is the exact
// inverse followed by the gate-weighted sum over the k choices. Backward mirrors both, also over
// all-to-all. Experts are stationary: rank p of the ep group owns experts [p L, (p + 1) L).
#pragma once

#include <cstdint>
#include <vector>

#include "core/phase_timer.h"
#include "core/storage.h"
#include "moe/routing.h"
#include "parallel/communicator.h"

namespace sy {

// Row counts of one forward, fixed by the routing and the counts exchange.
struct DispatchPlan {
  int peers = 1;            // P: ranks of the ep group
  int local_experts = 0;    // L = E / P
  std::int64_t capacity = 0;  // C, 0 for dropless
  std::vector<std::int64_t> send_rows_per_peer;     // host, [P]
  std::vector<std::int64_t> recv_rows_per_peer;     // host, [P]
  std::vector<std::int64_t> rows_per_local_expert;  // host, [L]: the expert GEMMs' group sizes
  std::int64_t send_rows = 0;
  std::int64_t recv_rows = 0;
  Tensor offsets;      // [E + 1] i32: start row of each expert in the send buffer
  Tensor recv_counts;  // [P, L] i32: rows received from source p for local expert l
};

// Builds the plan. Capacity mode needs no communication (every expert has C rows, padding
// included). Dropless exchanges counts with one all_to_all and reads them on the host: the one
// host synchronisation routing truly needs, since row counts size the all-to-all.
DispatchPlan plan_dispatch(const Routing& routing, Communicator& ep, Arena& arena, StreamRef stream = {},
                           PhaseTimer* timer = nullptr);

// x: [N, d] -> rows for this rank's experts, [plan.recv_rows, d] expert-major (from arena).
// `timer` (optional) gets the phases "permute" and "all_to_all".
Tensor dispatch_forward(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                        Arena& arena, StreamRef stream = {}, PhaseTimer* timer = nullptr);
// Backward of dispatch: d_expert_in [plan.recv_rows, d] -> dx [N, d] (overwritten; dropped
// choices contribute nothing).
void dispatch_backward(const Tensor& d_expert_in, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& dx, StreamRef stream = {}, PhaseTimer* timer = nullptr);

// expert_out [plan.recv_rows, d] expert-major -> out [N, d] = sum_j gate * y. Returns the rows
// as they came back, in send order ([plan.send_rows, d], from arena): backward needs them for
// the gate gradient.
Tensor combine_forward(const Tensor& expert_out, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& out, StreamRef stream = {}, PhaseTimer* timer = nullptr);
// Backward of combine: dout [N, d] -> d_expert_out [plan.recv_rows, d] expert-major (from
// arena) and dgate [N, k] f32 (overwritten).
Tensor combine_backward(const Tensor& dout, const Tensor& returned, const Routing& routing, const DispatchPlan& plan,
                        Communicator& ep, Arena& arena, const Tensor& dgate, StreamRef stream = {},
                        PhaseTimer* timer = nullptr);

}  // namespace sy
