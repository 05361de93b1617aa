// Every collective against a serial computation that each rank does itself: values are a
// known function of (rank, index), so each rank knows what every other rank contributed.
// Runs at 2 and 4 ranks, on MPI (cpu) and, with a GPU per rank, on NCCL (cuda).
#include <numeric>

#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

// Small integers: exact in f32 and bf16 sums, so results compare for equality.
double value(int rank, std::int64_t i) { return double((rank * 7 + i * 3) % 23) - 11.0; }

std::vector<double> rank_values(int rank, std::int64_t n, std::int64_t offset = 0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[std::size_t(i)] = value(rank, offset + i);
  return v;
}

OwnedTensor tensor_of(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  OwnedTensor t(shape, dtype, device);
  from_vector(t, values);
  return t;
}

class Collective : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override { SY_REQUIRE_BACKEND(GetParam()); }
  Communicator& comm() { return world(GetParam()); }
  Device device() const { return GetParam(); }
  void sync() { device_synchronize(); }
};

TEST_P(Collective, AllReduceSumAndMaxEqualSerial) {
  Communicator& c = comm();
  const std::int64_t n = 1001;
  for (DType dtype : {DType::f32, DType::bf16}) {
    OwnedTensor sum = tensor_of(rank_values(c.rank(), n), {n}, dtype, device());
    OwnedTensor max = tensor_of(rank_values(c.rank(), n), {n}, dtype, device());
    c.all_reduce(sum, ReduceOp::sum);
    c.all_reduce(max, ReduceOp::max);
    sync();
    std::vector<double> want_sum(std::size_t(n), 0.0), want_max(std::size_t(n), -1e30);
    for (int r = 0; r < c.size(); ++r) {
      for (std::int64_t i = 0; i < n; ++i) {
        want_sum[std::size_t(i)] += value(r, i);
        want_max[std::size_t(i)] = std::max(want_max[std::size_t(i)], value(r, i));
      }
    }
    EXPECT_EQ(to_vector(sum), want_sum) << dtype_name(dtype);
    EXPECT_EQ(to_vector(max), want_max) << dtype_name(dtype);
  }
}

TEST_P(Collective, ReduceScatterGivesEachRankItsSummedChunk) {
  Communicator& c = comm();
  const std::int64_t n = 37;
  OwnedTensor input = tensor_of(rank_values(c.rank(), n * c.size()), {n * c.size()}, DType::f32, device());
  OwnedTensor output({n}, DType::f32, device());
  poison(output);
  c.reduce_scatter(input, output, ReduceOp::sum);
  sync();
  std::vector<double> want(std::size_t(n), 0.0);
  for (int r = 0; r < c.size(); ++r)
    for (std::int64_t j = 0; j < n; ++j) want[std::size_t(j)] += value(r, c.rank() * n + j);
  EXPECT_EQ(to_vector(output), want);
}

TEST_P(Collective, AllGatherConcatenatesInRankOrder) {
  Communicator& c = comm();
  const std::int64_t rows = 3, cols = 5;
  OwnedTensor input = tensor_of(rank_values(c.rank(), rows * cols), {rows, cols}, DType::f32, device());
  OwnedTensor output({rows * c.size(), cols}, DType::f32, device());
  poison(output);
  c.all_gather(input, output);
  sync();
  std::vector<double> want;
  for (int r = 0; r < c.size(); ++r) {
    std::vector<double> part = rank_values(r, rows * cols);
    want.insert(want.end(), part.begin(), part.end());
  }
  EXPECT_EQ(to_vector(output), want);
}

TEST_P(Collective, BroadcastCopiesTheRootsData) {
  Communicator& c = comm();
  const int root = c.size() - 1;
  OwnedTensor data = tensor_of(rank_values(c.rank(), 129), {129}, DType::bf16, device());
  c.broadcast(data, root);
  sync();
  EXPECT_EQ(to_vector(data), rank_values(root, 129));
}

// Rows from rank `from` to rank `to`: uneven, and zero for some pairs.
std::int64_t rows_between(int from, int to) { return (from + 2 * to) % 3; }

TEST_P(Collective, AllToAllMovesUnevenAndZeroCounts) {
  Communicator& c = comm();
  const std::int64_t width = 5;
  std::vector<std::int64_t> send_counts, recv_counts;
  std::vector<double> send_values, want;
  // Each value encodes (source, destination, row, column), so misplaced rows show.
  auto encode = [&](int from, int to, std::int64_t row, std::int64_t col) {
    return double(from * 1000 + to * 100 + row * 10 + col);
  };
  for (int p = 0; p < c.size(); ++p) {
    send_counts.push_back(rows_between(c.rank(), p));
    recv_counts.push_back(rows_between(p, c.rank()));
    for (std::int64_t row = 0; row < send_counts.back(); ++row)
      for (std::int64_t col = 0; col < width; ++col) send_values.push_back(encode(c.rank(), p, row, col));
    for (std::int64_t row = 0; row < recv_counts.back(); ++row)
      for (std::int64_t col = 0; col < width; ++col) want.push_back(encode(p, c.rank(), row, col));
  }
  const std::int64_t send_rows = std::accumulate(send_counts.begin(), send_counts.end(), std::int64_t(0));
  const std::int64_t recv_rows = std::accumulate(recv_counts.begin(), recv_counts.end(), std::int64_t(0));
  // Buffers one row larger than needed: the spare row must stay untouched.
  send_values.resize(std::size_t((send_rows + 1) * width), -1.0);
  OwnedTensor send = tensor_of(send_values, {send_rows + 1, width}, DType::f32, device());
  OwnedTensor recv = tensor_of(std::vector<double>(std::size_t((recv_rows + 1) * width), -7.0), {recv_rows + 1, width},
                               DType::f32, device());
  c.all_to_all(send, send_counts, recv, recv_counts);
  sync();
  want.resize(std::size_t((recv_rows + 1) * width), -7.0);
  EXPECT_EQ(to_vector(recv), want);
}

TEST_P(Collective, AllToAllWithAllCountsZeroIsANoOp) {
  Communicator& c = comm();
  std::vector<std::int64_t> zeros(std::size_t(c.size()), 0);
  OwnedTensor send = tensor_of({1, 2, 3}, {1, 3}, DType::f32, device());
  OwnedTensor recv = tensor_of({4, 5, 6}, {1, 3}, DType::f32, device());
  c.all_to_all(send, zeros, recv, zeros);
  sync();
  EXPECT_EQ(to_vector(recv), (std::vector<double>{4, 5, 6}));
}

// Several blocks per peer, scattered over both tensors in different orders: rank r sends peer p
// two blocks (rows_between(r, p) and 1 rows), taken from the end of send backwards, and receives
// them into recv from the front, pair by pair; blocks pair up in the order listed.
TEST_P(Collective, ExchangePairsBlocksInOrderWhereverTheyLie) {
  Communicator& c = comm();
  const std::int64_t width = 3;
  auto encode = [&](int from, int to, int block, std::int64_t row, std::int64_t col) {
    return double(from * 10000 + to * 1000 + block * 100 + row * 10 + col);
  };
  std::int64_t send_rows = 0, recv_rows = 0;
  for (int p = 0; p < c.size(); ++p) {
    send_rows += rows_between(c.rank(), p) + 1;
    recv_rows += rows_between(p, c.rank()) + 1;
  }
  std::vector<RowBlock> sends, recvs;
  std::vector<double> send_values(std::size_t((send_rows + 1) * width), -1.0), want;
  std::int64_t end = send_rows + 1;  // row send_rows - 1 and below; the first row stays spare
  for (int p = 0; p < c.size(); ++p) {
    for (int block = 0; block < 2; ++block) {
      const std::int64_t rows = block == 0 ? rows_between(c.rank(), p) : 1;
      end -= rows;
      sends.push_back({p, end, rows});
      for (std::int64_t row = 0; row < rows; ++row)
        for (std::int64_t col = 0; col < width; ++col)
          send_values[std::size_t((end + row) * width + col)] = encode(c.rank(), p, block, row, col);
    }
  }
  // Receive the peers in reverse order, so the blocks of one peer are not next to each other's
  // send position.
  std::int64_t at = 0;
  for (int p = c.size() - 1; p >= 0; --p) {
    for (int block = 0; block < 2; ++block) {
      const std::int64_t rows = block == 0 ? rows_between(p, c.rank()) : 1;
      recvs.push_back({p, at, rows});
      at += rows;
      for (std::int64_t row = 0; row < rows; ++row)
        for (std::int64_t col = 0; col < width; ++col) want.push_back(encode(p, c.rank(), block, row, col));
    }
  }
  OwnedTensor send = tensor_of(send_values, {send_rows + 1, width}, DType::f32, device());
  OwnedTensor recv = tensor_of(std::vector<double>(std::size_t((recv_rows + 1) * width), -7.0), {recv_rows + 1, width},
                               DType::f32, device());
  c.exchange(send, sends, recv, recvs);
  sync();
  want.resize(std::size_t((recv_rows + 1) * width), -7.0);
  EXPECT_EQ(to_vector(recv), want);
}

TEST_P(Collective, ExchangeBlockOutsideItsTensorNamesTheRows) {
  Communicator& c = comm();
  OwnedTensor send = tensor_of({1, 2, 3, 4}, {2, 2}, DType::f32, device());
  OwnedTensor recv = tensor_of({0, 0, 0, 0}, {2, 2}, DType::f32, device());
  const std::vector<RowBlock> sends{{0, 1, 2}}, none;
  expect_error([&] { c.exchange(send, sends, recv, none); },
               "exchange on group world (rank " + std::to_string(c.rank()) + " of " + std::to_string(c.size()) +
                   "): send block of rows [1, 3) is outside f32[2, 2] " + device_name(device()));
}

TEST_P(Collective, SplitMakesGroupsByColorOrderedByKey) {
  Communicator& c = comm();
  // Even and odd world ranks, ordered backwards.
  auto group = c.split(c.rank() % 2, -c.rank(), "parity");
  const int members = (c.size() + 1 - c.rank() % 2) / 2;
  EXPECT_EQ(group->size(), members);
  EXPECT_EQ(group->name(), "parity");
  EXPECT_EQ(group->rank(), members - 1 - c.rank() / 2);
  OwnedTensor sum = tensor_of({double(c.rank())}, {1}, DType::f32, device());
  group->all_reduce(sum, ReduceOp::sum);
  sync();
  double want = 0;
  for (int r = c.rank() % 2; r < c.size(); r += 2) want += r;
  EXPECT_EQ(to_vector(sum)[0], want);
  group->barrier();
}

TEST_P(Collective, WrongCountVectorNamesOperationGroupAndRank) {
  Communicator& c = comm();
  OwnedTensor t({4, 2}, DType::f32, device());
  std::vector<std::int64_t> one{1};
  expect_error([&] { c.all_to_all(t, one, t, one); },
               "all_to_all on group world (rank " + std::to_string(c.rank()) + " of " + std::to_string(c.size()) +
                   "): need one count per peer (" + std::to_string(c.size()) + "), got 1 send and 1 recv counts");
  std::vector<std::int64_t> too_many(std::size_t(c.size()), 3);
  expect_error([&] { c.all_to_all(t, too_many, t, too_many); },
               "send counts add up to " + std::to_string(3 * c.size()) + " rows but send has 4");
}

TEST_P(Collective, TensorOnTheOtherDeviceIsRejected) {
  Communicator& c = comm();
  const Device other = device() == Device::cpu ? Device::cuda : Device::cpu;
  if (other == Device::cuda && !nccl_available()) GTEST_SKIP() << "no GPU for the mismatched tensor";
  OwnedTensor t({3}, DType::f32, other);
  expect_error([&] { c.all_reduce(t, ReduceOp::sum); },
               std::string("data is on ") + device_name(other) + " but this communicator moves " +
                   device_name(device()) + " tensors");
}

INSTANTIATE_TEST_SUITE_P(Backends, Collective, ::testing::Values(Device::cpu, Device::cuda), device_param_name);

}  // namespace
}  // namespace sy::test
