// GridLayout arithmetic without MPI: coordinates, group members written out by hand for a few
// layouts, partitions, the printed table, and the exact messages of the size checks.
#include <algorithm>
#include <regex>
#include <set>
#include <vector>

#include "parallel/process_grid.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

using Groups = std::vector<std::vector<int>>;

constexpr Group kGroups[] = {Group::tp, Group::dp, Group::ep, Group::edp};

// Every listed group is what group_members returns for each of its members, and together the
// listed groups cover the world once.
void expect_groups(const GridLayout& layout, Group group, const Groups& expected) {
  SCOPED_TRACE(group_name(group));
  std::vector<int> seen;
  for (const std::vector<int>& members : expected) {
    for (int rank : members) {
      EXPECT_EQ(layout.group_members(group, rank), members) << "rank " << rank;
      seen.push_back(rank);
    }
  }
  std::sort(seen.begin(), seen.end());
  std::vector<int> world(std::size_t(layout.world_size()));
  for (int r = 0; r < layout.world_size(); ++r) world[std::size_t(r)] = r;
  EXPECT_EQ(seen, world);
}

// Derived from group_members alone: each rank is in its own group at its position, every
// member agrees on the group, and the distinct groups have size(group) members and cover the
// world exactly once.
void expect_partition(const GridLayout& layout, Group group) {
  SCOPED_TRACE(group_name(group));
  std::set<std::vector<int>> distinct;
  for (int r = 0; r < layout.world_size(); ++r) {
    const std::vector<int> members = layout.group_members(group, r);
    ASSERT_EQ(int(members.size()), layout.size(group));
    EXPECT_EQ(members[std::size_t(layout.group_position(group, r))], r);
    for (int q : members) EXPECT_EQ(layout.group_members(group, q), members) << "ranks " << r << " and " << q;
    distinct.insert(members);
  }
  EXPECT_EQ(int(distinct.size()) * layout.size(group), layout.world_size());
}

void expect_coords(const GridLayout& layout, const std::vector<GridCoords>& expected) {
  ASSERT_EQ(int(expected.size()), layout.world_size());
  for (int r = 0; r < layout.world_size(); ++r) {
    const GridCoords c = layout.coords(r);
    const GridCoords& e = expected[std::size_t(r)];
    EXPECT_TRUE(c == e) << "rank " << r << ": got (tp " << c.tp << ", dp " << c.dp << ", ep " << c.ep << ", edp "
                        << c.edp << "), expected (tp " << e.tp << ", dp " << e.dp << ", ep " << e.ep << ", edp "
                        << e.edp << ")";
    EXPECT_EQ(layout.rank_of(c), r);
  }
}

// The message of the config error `call` raises, without the "rank R: file:line: " prefix.
std::string config_error_text(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
    std::smatch match;
    const std::string what = e.what();
    if (std::regex_match(what, match, std::regex("rank [0-9]+: [^ ]+:[0-9]+: (.*)"))) return match[1];
    ADD_FAILURE() << "message without the usual prefix: " << what;
    return what;
  }
  ADD_FAILURE() << "expected a config error";
  return "";
}

TEST(GridLayout, World8Tp2Ep2PutsTensorParallelRanksNextToEachOther) {
  const GridLayout layout = GridLayout::make(8, 2, 2);
  EXPECT_EQ(layout.tp_size(), 2);
  EXPECT_EQ(layout.dp_size(), 4);
  EXPECT_EQ(layout.ep_size(), 2);
  EXPECT_EQ(layout.edp_size(), 2);
  // {tp, dp, ep, edp}: tp fastest, then ep inside dp.
  expect_coords(layout, {{0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 1, 0}, {1, 1, 1, 0},
                         {0, 2, 0, 1}, {1, 2, 0, 1}, {0, 3, 1, 1}, {1, 3, 1, 1}});
  expect_groups(layout, Group::tp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_groups(layout, Group::dp, {{0, 2, 4, 6}, {1, 3, 5, 7}});
  expect_groups(layout, Group::ep, {{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  expect_groups(layout, Group::edp, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
}

TEST(GridLayout, World8Ep8SpreadsExpertsOverEveryRank) {
  const GridLayout layout = GridLayout::make(8, 1, 8);
  EXPECT_EQ(layout.dp_size(), 8);
  EXPECT_EQ(layout.edp_size(), 1);
  std::vector<GridCoords> coords;
  for (int r = 0; r < 8; ++r) coords.push_back({0, r, r, 0});
  expect_coords(layout, coords);
  expect_groups(layout, Group::tp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
  expect_groups(layout, Group::dp, {{0, 1, 2, 3, 4, 5, 6, 7}});
  expect_groups(layout, Group::ep, {{0, 1, 2, 3, 4, 5, 6, 7}});
  expect_groups(layout, Group::edp, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST(GridLayout, World4Tp4LeavesOneDataParallelReplica) {
  const GridLayout layout = GridLayout::make(4, 4, 1);
  EXPECT_EQ(layout.dp_size(), 1);
  expect_coords(layout, {{0, 0, 0, 0}, {1, 0, 0, 0}, {2, 0, 0, 0}, {3, 0, 0, 0}});
  expect_groups(layout, Group::tp, {{0, 1, 2, 3}});
  expect_groups(layout, Group::dp, {{0}, {1}, {2}, {3}});
  expect_groups(layout, Group::ep, {{0}, {1}, {2}, {3}});
  expect_groups(layout, Group::edp, {{0}, {1}, {2}, {3}});
}

TEST(GridLayout, SingleRankIsAloneInEveryGroup) {
  const GridLayout layout = GridLayout::make(1, 1, 1);
  expect_coords(layout, {{0, 0, 0, 0}});
  for (Group group : kGroups) expect_groups(layout, group, {{0}});
}

TEST(GridLayout, EveryGroupKindPartitionsTheWorld) {
  for (int world : {1, 2, 4, 6, 8, 12, 16}) {
    for (int tp = 1; tp <= world; ++tp) {
      if (world % tp != 0) continue;
      for (int ep = 1; ep <= world / tp; ++ep) {
        if ((world / tp) % ep != 0) continue;
        SCOPED_TRACE(GridLayout::make(world, tp, ep).describe());
        const GridLayout layout = GridLayout::make(world, tp, ep);
        for (Group group : kGroups) expect_partition(layout, group);
      }
    }
  }
}

TEST(GridLayout, DescribeStartsWithTheSizesAndListsEveryRank) {
  const std::string text = GridLayout::make(8, 2, 2).describe();
  EXPECT_EQ(text.rfind("world 8 = tp 2 x dp 4 (ep 2 x edp 2)\n", 0), 0u) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2 + 8) << text;  // header, column names, 8 ranks
  EXPECT_NE(text.find("   7   1   3   1    1\n"), std::string::npos) << text;
}

TEST(GridLayout, RejectsSizesWithOneMessageNamingTheSetting) {
  EXPECT_EQ(config_error_text([] { GridLayout::make(4, 0, 1); }), "parallel.tensor must be >= 1, got 0");
  EXPECT_EQ(config_error_text([] { GridLayout::make(4, 1, 0); }), "parallel.expert must be >= 1, got 0");
  EXPECT_EQ(config_error_text([] { GridLayout::make(4, 3, 1); }), "parallel.tensor=3 does not divide the world size 4");
  EXPECT_EQ(config_error_text([] { GridLayout::make(4, 1, 3); }),
            "parallel.expert=3 does not divide the data-parallel size 4");
  EXPECT_EQ(config_error_text([] { GridLayout::make(8, 2, 8); }),
            "parallel.expert=8 does not divide the data-parallel size 4");
}

}  // namespace
}  // namespace sy::test
