// The process grid: world = tp x dp, and inside dp, ep x edp. GridLayout is the arithmetic
// (which rank sits where, who shares a group), testable without MPI; ProcessGrid builds the
// four sub-communicators from it once, at start.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace sy {

// The four groups a rank belongs to, named by role.
//   tp:  tensor parallel; ranks with the same dp index (consecutive ranks, one node).
//   dp:  data parallel; ranks with the same tp index. Dense gradients are reduced here.
//   ep:  expert parallel; ranks with the same tp and edp index. Token all-to-all runs here.
//   edp: expert data parallel; ranks with the same tp and ep index, i.e. replicas of the same
//        experts. Expert gradients are reduced here.
enum class Group { tp, dp, ep, edp };
const char* group_name(Group group);  // "tp", "dp", "ep", "edp"

// A rank's index along each axis of the grid.
struct GridCoords {
  int tp = 0;   // in [0, tp size)
  int dp = 0;   // in [0, dp size) = edp * ep size + ep
  int ep = 0;   // in [0, ep size)
  int edp = 0;  // in [0, edp size)
  bool operator==(const GridCoords&) const = default;
};

class GridLayout {
 public:
  // Validates the sizes (sy::Error of kind config naming parallel.tensor / parallel.expert).
  // tp must divide world_size; ep must divide dp = world_size / tp.
  static GridLayout make(int world_size, int tp, int ep);

  int world_size() const { return world_size_; }
  int tp_size() const { return tp_; }
  int dp_size() const { return dp_; }
  int ep_size() const { return ep_; }
  int edp_size() const { return dp_ / ep_; }
  int size(Group group) const;

  // rank = dp * tp_size + tp (tp fastest), dp = edp * ep_size + ep (ep fastest inside dp).
  GridCoords coords(int rank) const;
  int rank_of(const GridCoords& coords) const;

  // Which group of its kind `rank` is in: equal for exactly the members of one group.
  int group_color(Group group, int rank) const;
  // The rank's position inside that group, in [0, size(group)).
  int group_position(Group group, int rank) const;
  // World ranks of `rank`'s group, in group order (position 0 first).
  std::vector<int> group_members(Group group, int rank) const;

  // "world 8 = tp 2 x dp 4 (ep 2 x edp 2)", then one row per rank with its coordinates.
  std::string describe() const;

 private:
  GridLayout(int world_size, int tp, int ep) : world_size_(world_size), tp_(tp), dp_(world_size / tp), ep_(ep) {}
  void check_rank(int rank) const;

  int world_size_;
  int tp_;
  int dp_;
  int ep_;
};

// The grid over a world communicator: the four sub-communicators (same backend as world) and
// this rank's coordinates. Construction is collective over world; world must outlive the grid.
class ProcessGrid {
 public:
  ProcessGrid(Communicator& world, int tp, int ep);

  const GridLayout& layout() const { return layout_; }
  const GridCoords& coords() const { return coords_; }
  Communicator& world() const { return *world_; }
  Communicator& tp() const { return *tp_; }
  Communicator& dp() const { return *dp_; }
  Communicator& ep() const { return *ep_; }
  Communicator& edp() const { return *edp_; }
  Communicator& group(Group group) const;

 private:
  std::unique_ptr<Communicator> split(Group group);

  Communicator* world_;
  GridLayout layout_;
  GridCoords coords_;
  std::unique_ptr<Communicator> tp_, dp_, ep_, edp_;
};

}  // namespace sy
