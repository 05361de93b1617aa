// Router loss scopes over a dp group: every rank routes its own slice of one global batch
// (uneven slices, jitter keyed by global token index) and compares with a serial run over the
// whole batch that each rank does itself. Runs at 2 and 4 ranks on MPI (CPU, fp64).
#include "moe/router.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

struct Slice {
  std::int64_t first = 0, count = 0, total = 0;
};

// Rank r holds 5 + 2r tokens, after those of ranks 0..r-1.
Slice slice_of(int rank, int ranks) {
  Slice s;
  for (int r = 0; r < ranks; ++r) {
    const std::int64_t n = 5 + 2 * r;
    if (r < rank) s.first += n;
    if (r == rank) s.count = n;
    s.total += n;
  }
  return s;
}

RouterSettings scoped(RouterLossScope scope) {
  RouterSettings s;
  s.experts = 4;
  s.top_k = 2;
  s.jitter_eps = 0.1f;
  s.aux_loss_coef = 0.5f;
  s.z_loss_coef = 0.3f;
  s.loss_scope = scope;
  return s;
}

TEST(RouterMpi, GlobalScopeEqualsSerialRunOverAllRanksTokens) {
  Communicator& dp = world(Device::cpu);
  const Slice sl = slice_of(dp.rank(), dp.size());
  const std::int64_t d = 6;
  OwnedTensor x = random_tensor({sl.total, d}, DType::f64, Device::cpu, 61);
  OwnedTensor w = random_tensor({d, 4}, DType::f64, Device::cpu, 62);
  const RngKey key{9, 0, 2};
  Arena arena(Device::cpu, 1 << 20);

  RouterState serial, mine;
  router_forward(scoped(RouterLossScope::local), x, w, Tensor{}, true, key, 0, arena, serial);
  const Tensor my_x = x.view().slice_rows(sl.first, sl.count);
  router_forward(scoped(RouterLossScope::global), my_x, w, Tensor{}, true, key, sl.first, arena, mine, {}, &dp);
  EXPECT_NEAR(to_vector(mine.aux_loss)[0], to_vector(serial.aux_loss)[0], 1e-12);
  EXPECT_NEAR(to_vector(mine.z_loss)[0], to_vector(serial.z_loss)[0], 1e-12);
  EXPECT_EQ(to_vector(mine.tokens_per_expert), to_vector(serial.tokens_per_expert));

  // Only the losses (dgate = 0): the ranks' weight gradients sum to the serial one, and each
  // rank's dx is the serial dx of its rows.
  OwnedTensor dgate = zeros({sl.count, 2}, DType::f64, Device::cpu), dgate_all = zeros({sl.total, 2}, DType::f64, Device::cpu);
  OwnedTensor dx = zeros({sl.count, d}, DType::f64, Device::cpu);
  OwnedTensor dx_all = zeros({sl.total, d}, DType::f64, Device::cpu);
  OwnedTensor dw = zeros({d, 4}, DType::f64, Device::cpu), dw_all = zeros({d, 4}, DType::f64, Device::cpu);
  router_backward(mine, w, Tensor{}, dgate, dx, dw, Tensor{}, GradMode::overwrite, arena);
  router_backward(serial, w, Tensor{}, dgate_all, dx_all, dw_all, Tensor{}, GradMode::overwrite, arena);
  dp.all_reduce(dw, ReduceOp::sum);
  EXPECT_LT(relative_error(dw, dw_all), 1e-12);
  EXPECT_LT(relative_error(dx, dx_all.view().slice_rows(sl.first, sl.count)), 1e-12);
}

TEST(RouterMpi, LocalScopeUsesOnlyThisRanksTokensButLogsGlobalCounts) {
  Communicator& dp = world(Device::cpu);
  const Slice sl = slice_of(dp.rank(), dp.size());
  OwnedTensor x = random_tensor({sl.total, 6}, DType::f64, Device::cpu, 71);
  OwnedTensor w = random_tensor({6, 4}, DType::f64, Device::cpu, 72);
  const RngKey key{9, 0, 2};
  Arena arena(Device::cpu, 1 << 20);
  const Tensor my_x = x.view().slice_rows(sl.first, sl.count);
  RouterState alone, in_group, serial;
  router_forward(scoped(RouterLossScope::local), my_x, w, Tensor{}, true, key, sl.first, arena, alone);
  router_forward(scoped(RouterLossScope::local), my_x, w, Tensor{}, true, key, sl.first, arena, in_group, {}, &dp);
  router_forward(scoped(RouterLossScope::local), x, w, Tensor{}, true, key, 0, arena, serial);
  EXPECT_EQ(to_vector(in_group.aux_loss), to_vector(alone.aux_loss));
  EXPECT_EQ(to_vector(in_group.z_loss), to_vector(alone.z_loss));
  EXPECT_EQ(to_vector(in_group.tokens_per_expert), to_vector(serial.tokens_per_expert));
  if (dp.size() > 1) {
    EXPECT_NE(to_vector(in_group.aux_loss), to_vector(serial.aux_loss));
  }
}

}  // namespace
}  // namespace sy::test
