// Grid arithmetic, size validation, and the collective construction of the sub-communicators.
#include "parallel/process_grid.h"

#include <iomanip>
#include <sstream>

namespace sy {

const char* group_name(Group group) {
  switch (group) {
    case Group::tp: return "tp";
    case Group::dp: return "dp";
    case Group::ep: return "ep";
    case Group::edp: return "edp";
  }
  return "?";
}

GridLayout GridLayout::make(int world_size, int tp, int ep) {
  SY_CHECK(world_size >= 1) << "the world size must be >= 1, got " << world_size;
  SY_CHECK_AS(ErrorKind::config, tp >= 1) << "parallel.tensor must be >= 1, got " << tp;
  SY_CHECK_AS(ErrorKind::config, ep >= 1) << "parallel.expert must be >= 1, got " << ep;
  SY_CHECK_AS(ErrorKind::config, world_size % tp == 0)
      << "parallel.tensor=" << tp << " does not divide the world size " << world_size;
  const int dp = world_size / tp;
  SY_CHECK_AS(ErrorKind::config, dp % ep == 0)
      << "parallel.expert=" << ep << " does not divide the data-parallel size " << dp;
  return GridLayout(world_size, tp, ep);
}

int GridLayout::size(Group group) const {
  switch (group) {
    case Group::tp: return tp_size();
    case Group::dp: return dp_size();
    case Group::ep: return ep_size();
    case Group::edp: return edp_size();
  }
  return 0;
}

void GridLayout::check_rank(int rank) const {
  SY_CHECK(rank >= 0 && rank < world_size_) << "rank " << rank << " is outside the world of " << world_size_;
}

GridCoords GridLayout::coords(int rank) const {
  check_rank(rank);
  GridCoords c;
  c.tp = rank % tp_;
  c.dp = rank / tp_;
  c.ep = c.dp % ep_;
  c.edp = c.dp / ep_;
  return c;
}

int GridLayout::rank_of(const GridCoords& c) const {
  SY_CHECK(c.tp >= 0 && c.tp < tp_ && c.ep >= 0 && c.ep < ep_ && c.edp >= 0 && c.edp < edp_size() &&
           c.dp == c.edp * ep_ + c.ep)
      << "coordinates (tp " << c.tp << ", dp " << c.dp << ", ep " << c.ep << ", edp " << c.edp
      << ") are not on the grid " << tp_ << " x " << dp_ << " (ep " << ep_ << " x edp " << edp_size() << ")";
  return c.dp * tp_ + c.tp;
}

// A group is identified by the coordinates its members share.
int GridLayout::group_color(Group group, int rank) const {
  const GridCoords c = coords(rank);
  switch (group) {
    case Group::tp: return c.dp;
    case Group::dp: return c.tp;
    case Group::ep: return c.tp * edp_size() + c.edp;
    case Group::edp: return c.tp * ep_ + c.ep;
  }
  return 0;
}

int GridLayout::group_position(Group group, int rank) const {
  const GridCoords c = coords(rank);
  switch (group) {
    case Group::tp: return c.tp;
    case Group::dp: return c.dp;
    case Group::ep: return c.ep;
    case Group::edp: return c.edp;
  }
  return 0;
}

std::vector<int> GridLayout::group_members(Group group, int rank) const {
  const int color = group_color(group, rank);
  std::vector<int> members(std::size_t(size(group)), -1);
  for (int r = 0; r < world_size_; ++r) {
    if (group_color(group, r) == color) members[std::size_t(group_position(group, r))] = r;
  }
  return members;
}

std::string GridLayout::describe() const {
  std::ostringstream s;
  s << "world " << world_size_ << " = tp " << tp_ << " x dp " << dp_ << " (ep " << ep_ << " x edp " << edp_size()
    << ")\n";
  s << "rank  tp  dp  ep  edp\n";
  for (int r = 0; r < world_size_; ++r) {
    const GridCoords c = coords(r);
    s << std::setw(4) << r << std::setw(4) << c.tp << std::setw(4) << c.dp << std::setw(4) << c.ep << std::setw(5)
      << c.edp << "\n";
  }
  return s.str();
}

ProcessGrid::ProcessGrid(Communicator& world, int tp, int ep)
    : world_(&world), layout_(GridLayout::make(world.size(), tp, ep)), coords_(layout_.coords(world.rank())) {
  // Every rank splits in the same order: split is collective over world.
  tp_ = split(Group::tp);
  dp_ = split(Group::dp);
  ep_ = split(Group::ep);
  edp_ = split(Group::edp);
}

std::unique_ptr<Communicator> ProcessGrid::split(Group group) {
  const int rank = world_->rank();
  const int position = layout_.group_position(group, rank);
  std::unique_ptr<Communicator> sub = world_->split(layout_.group_color(group, rank), position, group_name(group));
  SY_CHECK_AS(ErrorKind::internal, sub->size() == layout_.size(group) && sub->rank() == position)
      << "group " << group_name(group) << ": expected rank " << position << " of " << layout_.size(group)
      << ", the backend made rank " << sub->rank() << " of " << sub->size();
  return sub;
}

Communicator& ProcessGrid::group(Group group) const {
  switch (group) {
    case Group::tp: return tp();
    case Group::dp: return dp();
    case Group::ep: return ep();
    case Group::edp: return edp();
  }
  return tp();
}

}  // namespace sy
