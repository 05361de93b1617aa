// ProcessGrid at 2 and 4 ranks, on MPI (cpu) and NCCL (cuda): for every (tp, ep) the world size
// allows, each sub-communicator has the layout's size and rank, and a sum over it sees exactly
// the layout's member ranks.
#include "parallel/process_grid.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

constexpr Group kGroups[] = {Group::tp, Group::dp, Group::ep, Group::edp};

class ProcessGridTest : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override { SY_REQUIRE_BACKEND(GetParam()); }
};

TEST_P(ProcessGridTest, EveryGroupHoldsTheLayoutsMembers) {
  Communicator& world_comm = world(GetParam());
  const int world_size = world_comm.size(), rank = world_comm.rank();
  for (int tp = 1; tp <= world_size; ++tp) {
    if (world_size % tp != 0) continue;
    for (int ep = 1; ep <= world_size / tp; ++ep) {
      if ((world_size / tp) % ep != 0) continue;
      SCOPED_TRACE("tp " + std::to_string(tp) + ", ep " + std::to_string(ep));
      ProcessGrid grid(world_comm, tp, ep);
      const GridLayout& layout = grid.layout();
      EXPECT_TRUE(grid.coords() == layout.coords(rank));
      EXPECT_EQ(&grid.world(), &world_comm);
      for (Group group : kGroups) {
        SCOPED_TRACE(group_name(group));
        Communicator& comm = grid.group(group);
        EXPECT_EQ(comm.name(), group_name(group));
        EXPECT_EQ(comm.size(), layout.size(group));
        EXPECT_EQ(comm.rank(), layout.group_position(group, rank));
        EXPECT_EQ(comm.device(), GetParam());
        // {world rank, its square, 1} summed over the group: the members' sum, sum of squares
        // and count (small integers, exact in f32).
        OwnedTensor sums({3}, DType::f32, GetParam());
        from_vector(sums, {double(rank), double(rank * rank), 1.0});
        comm.all_reduce(sums, ReduceOp::sum);
        device_synchronize();
        std::vector<double> expected{0.0, 0.0, 0.0};
        for (int member : layout.group_members(group, rank)) {
          expected[0] += member;
          expected[1] += member * member;
          expected[2] += 1;
        }
        EXPECT_EQ(to_vector(sums), expected);
      }
    }
  }
}

TEST_P(ProcessGridTest, AccessorsReturnTheNamedGroups) {
  ProcessGrid grid(world(GetParam()), 1, 1);
  EXPECT_EQ(&grid.group(Group::tp), &grid.tp());
  EXPECT_EQ(&grid.group(Group::dp), &grid.dp());
  EXPECT_EQ(&grid.group(Group::ep), &grid.ep());
  EXPECT_EQ(&grid.group(Group::edp), &grid.edp());
  EXPECT_EQ(grid.dp().size(), grid.world().size());
}

TEST_P(ProcessGridTest, RejectsTensorSizeThatDoesNotDivideTheWorld) {
  Communicator& world_comm = world(GetParam());
  const int tp = world_comm.size() + 1;
  expect_error([&] { ProcessGrid grid(world_comm, tp, 1); }, ErrorKind::config,
               "parallel.tensor=" + std::to_string(tp) + " does not divide the world size " +
                   std::to_string(world_comm.size()));
}

INSTANTIATE_TEST_SUITE_P(Backends, ProcessGridTest, ::testing::Values(Device::cpu, Device::cuda), device_param_name);

}  // namespace
}  // namespace sy::test
