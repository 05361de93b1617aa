// Dispatch and combine across the ep group (the world here) against a serial computation: each
// rank builds the same global routing, so it knows what every token should receive. Exchanged
// whole, and in 3 chunks (capacity 5 cuts into pieces of 1, 2 and 2 rows). The "experts" scale
// their rows by (expert + 1), enough to tell experts and rows apart.
#include "moe/dispatch.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

constexpr int kTopK = 2;
constexpr std::int64_t kWidth = 3;

// Routing of this rank's tokens; global token g's choices are a fixed function of g, so
// the serial answer is known everywhere. Slots follow the position policy (all first choices,
// then all second choices, in token order) and drop past `capacity` (0: dropless).
struct HostRouting {
  std::vector<double> expert, slot, gate, counts;
};

HostRouting make_routing(std::int64_t tokens, std::int64_t first_token, int experts, std::int64_t capacity) {
  HostRouting r;
  r.expert.resize(std::size_t(tokens * kTopK));
  r.slot.resize(r.expert.size());
  r.gate.resize(r.expert.size());
  r.counts.assign(std::size_t(experts), 0);
  for (std::int64_t n = 0; n < tokens; ++n) {
    const std::int64_t g = first_token + n;
    const int e0 = int((g * 5 + 1) % experts), e1 = int((e0 + 1 + g % (experts - 1)) % experts);
    r.expert[std::size_t(n * kTopK)] = e0;
    r.expert[std::size_t(n * kTopK + 1)] = e1;
    r.gate[std::size_t(n * kTopK)] = 0.75;
    r.gate[std::size_t(n * kTopK + 1)] = 0.25;
  }
  for (int j = 0; j < kTopK; ++j) {
    for (std::int64_t n = 0; n < tokens; ++n) {
      const std::size_t c = std::size_t(n * kTopK + j);
      double& count = r.counts[std::size_t(r.expert[c])];
      r.slot[c] = (capacity == 0 || count < double(capacity)) ? count : -1;
      if (r.slot[c] >= 0) count += 1;
    }
  }
  return r;
}

// (device, dropless, chunks, experts per rank)
class Dispatch : public ::testing::TestWithParam<std::tuple<Device, bool, int, int>> {
 protected:
  void SetUp() override { SY_REQUIRE_BACKEND(std::get<0>(GetParam())); }
};

TEST_P(Dispatch, RoundTripEqualsSerialForwardAndBackward) {
  const auto [device, dropless, chunks, per_rank] = GetParam();
  Communicator& ep = world(device);
  const int experts = per_rank * ep.size();
  const std::int64_t tokens = 11, first = ep.rank() * tokens;
  const std::int64_t capacity = dropless ? 0 : 5;  // 11 * 2 / experts rounded down: some drop
  HostRouting host = make_routing(tokens, first, experts, capacity);

  Arena arena(device, std::size_t(1) << 22);
  Routing routing;
  routing.tokens = tokens;
  routing.top_k = kTopK;
  routing.experts = experts;
  routing.capacity = capacity;
  OwnedTensor expert({tokens, kTopK}, DType::i32, device), slot({tokens, kTopK}, DType::i32, device);
  const DType dtype = device == Device::cpu ? DType::f64 : DType::f32;
  OwnedTensor gate({tokens, kTopK}, dtype, device), counts({experts}, DType::i32, device);
  from_vector(expert, host.expert);
  from_vector(slot, host.slot);
  from_vector(gate, host.gate);
  from_vector(counts, host.counts);
  routing.expert = expert;
  routing.slot = slot;
  routing.gate = gate;
  routing.expert_counts = counts;

  OwnedTensor x = random_tensor({tokens, kWidth}, dtype, device, 100 + std::uint64_t(ep.rank()));
  OwnedTensor dout = random_tensor({tokens, kWidth}, dtype, device, 200 + std::uint64_t(ep.rank()));

  DispatchPlan plan = plan_dispatch(routing, ep, chunks, arena);
  ASSERT_EQ(plan.chunks, ep.size() > 1 ? chunks : 1);
  Tensor expert_in = dispatch_forward(x, routing, plan, ep, arena);
  // Chunk-major, then expert-major rows: in chunk j, local expert l owns
  // chunk_rows_per_local_expert[j L + l] consecutive rows.
  std::vector<double> rows = to_vector(expert_in), scale;
  for (int j = 0; j < plan.chunks; ++j)
    for (int l = 0; l < plan.local_experts; ++l)
      for (std::int64_t r = 0; r < plan.chunk_rows_per_local_expert[std::size_t(j * plan.local_experts + l)]; ++r)
        scale.push_back(double(ep.rank() * plan.local_experts + l + 1));
  ASSERT_EQ(std::int64_t(scale.size()), plan.recv_rows);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] *= scale[i / kWidth];
  Tensor expert_out = arena.alloc(expert_in.shape(), dtype);
  from_vector(expert_out, rows);
  OwnedTensor out({tokens, kWidth}, dtype, device);
  poison(out);
  Tensor returned = combine_forward(expert_out, routing, plan, ep, arena, out);

  OwnedTensor dgate({tokens, kTopK}, dtype, device), dx({tokens, kWidth}, dtype, device);
  poison(dgate);
  poison(dx);
  Tensor d_expert_out = combine_backward(dout, returned, routing, plan, ep, arena, dgate);
  std::vector<double> d_rows = to_vector(d_expert_out);
  for (std::size_t i = 0; i < d_rows.size(); ++i) d_rows[i] *= scale[i / kWidth];
  Tensor d_expert_in = arena.alloc(expert_in.shape(), dtype);
  from_vector(d_expert_in, d_rows);
  dispatch_backward(d_expert_in, routing, plan, ep, arena, dx);
  device_synchronize();

  // Serial answer: out = sum_j gate (e + 1) x; dx = sum_j gate (e + 1) dout; dgate = (e + 1) dout . x.
  const std::vector<double> xv = to_vector(x), dov = to_vector(dout);
  std::vector<double> want_out(xv.size(), 0.0), want_dx(xv.size(), 0.0), want_dgate(host.gate.size(), 0.0);
  for (std::int64_t n = 0; n < tokens; ++n) {
    for (int j = 0; j < kTopK; ++j) {
      const std::size_t c = std::size_t(n * kTopK + j);
      if (host.slot[c] < 0) continue;
      const double s = host.expert[c] + 1, g = host.gate[c];
      for (std::int64_t i = 0; i < kWidth; ++i) {
        const std::size_t at = std::size_t(n * kWidth + i);
        want_out[at] += g * s * xv[at];
        want_dx[at] += g * s * dov[at];
        want_dgate[c] += s * dov[at] * xv[at];
      }
    }
  }
  const double tol = dtype == DType::f64 ? 1e-12 : 1e-6;
  EXPECT_LT(relative_error(to_vector(out), want_out), tol);
  EXPECT_LT(relative_error(to_vector(dx), want_dx), tol);
  EXPECT_LT(relative_error(to_vector(dgate), want_dgate), tol);
}

std::string dispatch_name(const ::testing::TestParamInfo<std::tuple<Device, bool, int, int>>& info) {
  return std::string(device_name(std::get<0>(info.param))) + (std::get<1>(info.param) ? "_dropless" : "_capacity") +
         "_chunks" + std::to_string(std::get<2>(info.param)) + "_local" + std::to_string(std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Modes, Dispatch,
                         ::testing::Combine(::testing::Values(Device::cpu, Device::cuda), ::testing::Bool(),
                                            ::testing::Values(1, 3), ::testing::Values(1, 2)),
                         dispatch_name);

}  // namespace
}  // namespace sy::test
