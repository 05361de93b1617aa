// Dispatch and combine: the row movements of moe/permute.h joined by exchanges over ep.
#include "moe/dispatch.h"

#include "moe/permute.h"

namespace sy {
namespace {

std::vector<std::int32_t> download_i32(const Tensor& t, StreamRef stream) {
  std::vector<std::int32_t> values(static_cast<std::size_t>(t.numel()));
  const Tensor host(values.data(), t.shape(), DType::i32, Device::cpu);
  copy(host, t, stream);  // waits for the stream when t is on the GPU
  return values;
}

// Every chunk of one direction, in order, without overlap: the K = 1 exchange through a
// staging buffer from the arena, or the K chunks' block exchanges.
void exchange_all(const DispatchPlan& plan, bool to_experts, const Tensor& from, const Tensor& to, Communicator& ep,
                  Arena& arena, StreamRef stream) {
  if (plan.chunks == 1) {
    exchange_whole(plan, to_experts, from, to, exchange_staging(plan, from, arena), ep, stream);
    return;
  }
  for (int j = 0; j < plan.chunks; ++j) exchange_chunk(plan, j, to_experts, from, to, ep, stream);
}

}  // namespace

DispatchPlan plan_dispatch(const Routing& routing, Communicator& ep, int chunks, Arena& arena, StreamRef stream,
                           PhaseTimer* timer) {
  DispatchPlan plan;
  plan.peers = ep.size();
  SY_CHECK(routing.experts % plan.peers == 0)
      << "moe.experts=" << routing.experts << " is not divisible by the expert-parallel size " << plan.peers;
  SY_CHECK(chunks >= 1) << "plan_dispatch: chunks must be at least 1, got " << chunks;
  plan.local_experts = routing.experts / plan.peers;
  plan.capacity = routing.capacity;
  plan.chunks = plan.peers > 1 ? chunks : 1;
  const int peers = plan.peers, locals = plan.local_experts, pieces = plan.chunks;
  const Device device = routing.expert_counts.device();

  std::vector<std::int32_t> my_counts, recv_counts;
  if (plan.capacity > 0) {
    // Fixed-size exchange: C rows per expert from every rank, padding included.
    my_counts.assign(static_cast<std::size_t>(routing.experts), std::int32_t(plan.capacity));
    recv_counts.assign(static_cast<std::size_t>(peers * locals), std::int32_t(plan.capacity));
    plan.blocks = RegroupBlocks::uniform(peers, locals, plan.capacity);
  } else if (peers == 1) {
    my_counts = download_i32(routing.expert_counts, stream);
    recv_counts = my_counts;
  } else {
    // Each peer p gets the L counts of its experts: one row of L per peer.
    SY_CHECK(device == ep.device()) << "plan_dispatch: routing on " << device_name(device) << " but the ep group moves "
                                    << device_name(ep.device()) << " tensors";
    const Tensor send = routing.expert_counts.reshape({peers, locals});
    const Tensor recv = arena.alloc({peers, locals}, DType::i32);
    const std::vector<std::int64_t> ones(static_cast<std::size_t>(peers), 1);
    ep.all_to_all(send, ones, recv, ones, stream);
    my_counts = download_i32(routing.expert_counts, stream);
    recv_counts = download_i32(recv, stream);
    plan.blocks = RegroupBlocks::of(recv);
  }
  mark_phase(timer, "all_to_all");  // the counts exchange and its host read
  plan.offsets = arena.alloc({routing.experts + 1}, DType::i32);
  moe_expert_offsets(routing.expert_counts, plan.capacity, plan.offsets, stream);
  mark_phase(timer, "permute");

  plan.send_rows_per_expert.assign(my_counts.begin(), my_counts.end());
  plan.recv_rows_per_block.assign(recv_counts.begin(), recv_counts.end());
  plan.send_rows_per_peer.assign(static_cast<std::size_t>(peers), 0);
  plan.recv_rows_per_peer.assign(static_cast<std::size_t>(peers), 0);
  for (int p = 0; p < peers; ++p) {
    for (int l = 0; l < locals; ++l) {
      const std::size_t block = static_cast<std::size_t>(p * locals + l);
      plan.send_rows_per_peer[static_cast<std::size_t>(p)] += plan.send_rows_per_expert[block];
      plan.recv_rows_per_peer[static_cast<std::size_t>(p)] += plan.recv_rows_per_block[block];
    }
  }
  for (const std::int64_t rows : plan.send_rows_per_expert) plan.send_rows += rows;
  plan.rows_per_local_expert.assign(static_cast<std::size_t>(locals), 0);
  plan.chunk_rows_per_local_expert.assign(static_cast<std::size_t>(pieces * locals), 0);
  plan.chunk_first_row.assign(static_cast<std::size_t>(pieces) + 1, 0);
  for (int j = 0; j < pieces; ++j) {
    std::int64_t chunk_rows = 0;
    for (int l = 0; l < locals; ++l) {
      std::int64_t rows = 0;
      for (int p = 0; p < peers; ++p) {
        const std::int64_t n = plan.recv_rows_per_block[static_cast<std::size_t>(p * locals + l)];
        rows += piece_start(n, j + 1, pieces) - piece_start(n, j, pieces);
      }
      plan.chunk_rows_per_local_expert[static_cast<std::size_t>(j * locals + l)] = rows;
      plan.rows_per_local_expert[static_cast<std::size_t>(l)] += rows;
      chunk_rows += rows;
    }
    const std::size_t at = static_cast<std::size_t>(j);
    plan.chunk_first_row[at + 1] = plan.chunk_first_row[at] + chunk_rows;
  }
  plan.recv_rows = plan.chunk_first_row.back();
  return plan;
}

Tensor dispatch_permute(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Arena& arena,
                        StreamRef stream) {
  Tensor send = arena.alloc({plan.send_rows, x.size(1)}, x.dtype());
  if (plan.capacity > 0) fill_bytes(send, 0, stream);
  moe_scatter_rows(x, routing.expert, routing.slot, plan.offsets, send, stream);
  return send;
}

void exchange_chunk(const DispatchPlan& plan, int chunk, bool to_experts, const Tensor& from, const Tensor& to,
                    Communicator& ep, StreamRef stream) {
  SY_CHECK(chunk >= 0 && chunk < plan.chunks) << "exchange_chunk: chunk " << chunk << " of " << plan.chunks;
  const int peers = plan.peers, locals = plan.local_experts, pieces = plan.chunks;
  // Send side: expert e = p L + l goes to peer p; its rows start after the experts before it.
  std::vector<RowBlock> send_side, expert_side;
  std::int64_t expert_start = 0;
  for (int p = 0; p < peers; ++p) {
    for (int l = 0; l < locals; ++l) {
      const std::int64_t n = plan.send_rows_per_expert[static_cast<std::size_t>(p * locals + l)];
      const std::int64_t lo = piece_start(n, chunk, pieces), hi = piece_start(n, chunk + 1, pieces);
      send_side.push_back({p, expert_start + lo, hi - lo});
      expert_start += n;
    }
  }
  // Expert side: chunk-major, then local expert, then source peer. Per peer both lists run in
  // expert order, so the k-th block to a peer is the k-th block it expects from us.
  std::int64_t at = plan.chunk_first_row[static_cast<std::size_t>(chunk)];
  for (int l = 0; l < locals; ++l) {
    for (int p = 0; p < peers; ++p) {
      const std::int64_t n = plan.recv_rows_per_block[static_cast<std::size_t>(p * locals + l)];
      const std::int64_t rows = piece_start(n, chunk + 1, pieces) - piece_start(n, chunk, pieces);
      expert_side.push_back({p, at, rows});
      at += rows;
    }
  }
  if (to_experts) {
    ep.exchange(from, send_side, to, expert_side, stream);
  } else {
    ep.exchange(from, expert_side, to, send_side, stream);
  }
}

Tensor exchange_staging(const DispatchPlan& plan, const Tensor& rows, Arena& arena) {
  if (plan.chunks > 1 || plan.local_experts == 1) return Tensor();
  return arena.alloc({plan.recv_rows, rows.size(1)}, rows.dtype());
}

void exchange_whole(const DispatchPlan& plan, bool to_experts, const Tensor& from, const Tensor& to,
                    const Tensor& staging, Communicator& ep, StreamRef stream) {
  SY_CHECK(plan.chunks == 1 && plan.peers > 1) << "exchange_whole: needs one chunk and more than one ep rank, got "
                                               << plan.chunks << " chunks and " << plan.peers << " ranks";
  const std::vector<std::int64_t>& send = plan.send_rows_per_peer;
  const std::vector<std::int64_t>& recv = plan.recv_rows_per_peer;
  if (plan.local_experts == 1) {  // one expert per rank: source-major is expert-major, nothing to regroup
    if (to_experts) {
      ep.all_to_all(from, send, to, recv, stream);
    } else {
      ep.all_to_all(from, recv, to, send, stream);
    }
    return;
  }
  if (to_experts) {
    ep.all_to_all(from, send, staging, recv, stream);
    moe_regroup(staging, plan.blocks, to, true, stream);
  } else {
    moe_regroup(from, plan.blocks, staging, false, stream);
    ep.all_to_all(staging, recv, to, send, stream);
  }
}

Tensor dispatch_forward(const Tensor& x, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                        Arena& arena, StreamRef stream, PhaseTimer* timer) {
  Tensor send = dispatch_permute(x, routing, plan, arena, stream);
  mark_phase(timer, "permute");
  if (plan.peers == 1) return send;  // the two sides coincide
  Tensor expert_in = arena.alloc({plan.recv_rows, x.size(1)}, x.dtype());
  exchange_all(plan, true, send, expert_in, ep, arena, stream);
  mark_phase(timer, "all_to_all");
  return expert_in;
}

void dispatch_backward(const Tensor& d_expert_in, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& dx, StreamRef stream, PhaseTimer* timer) {
  Tensor d_send = d_expert_in;
  if (plan.peers > 1) {
    d_send = arena.alloc({plan.send_rows, dx.size(1)}, dx.dtype());
    exchange_all(plan, false, d_expert_in, d_send, ep, arena, stream);
    mark_phase(timer, "all_to_all");
  }
  moe_gather_rows_sum(d_send, routing.expert, routing.slot, plan.offsets, dx, stream);
  mark_phase(timer, "permute");
}

Tensor combine_forward(const Tensor& expert_out, const Routing& routing, const DispatchPlan& plan, Communicator& ep,
                       Arena& arena, const Tensor& out, StreamRef stream, PhaseTimer* timer) {
  Tensor returned = expert_out;
  if (plan.peers > 1) {
    returned = arena.alloc({plan.send_rows, out.size(1)}, out.dtype());
    exchange_all(plan, false, expert_out, returned, ep, arena, stream);
    mark_phase(timer, "all_to_all");
  }
  moe_combine(returned, routing.expert, routing.slot, plan.offsets, routing.gate, out, stream);
  mark_phase(timer, "combine");
  return returned;
}

Tensor combine_backward(const Tensor& dout, const Tensor& returned, const Routing& routing, const DispatchPlan& plan,
                        Communicator& ep, Arena& arena, const Tensor& dgate, StreamRef stream, PhaseTimer* timer) {
  const std::int64_t d = dout.size(1);
  Tensor d_returned = arena.alloc({plan.send_rows, d}, dout.dtype());
  moe_combine_backward(dout, returned, routing.expert, routing.slot, plan.offsets, routing.gate, d_returned, dgate,
                       stream);
  mark_phase(timer, "combine");
  if (plan.peers == 1) return d_returned;
  Tensor d_expert_out = arena.alloc({plan.recv_rows, d}, dout.dtype());
  exchange_all(plan, true, d_returned, d_expert_out, ep, arena, stream);
  mark_phase(timer, "all_to_all");
  return d_expert_out;
}

}  // namespace sy
