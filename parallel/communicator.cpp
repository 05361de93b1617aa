// Argument checks shared by both communicator backends, and the world factory.
#include "parallel/communicator.h"

#include <sstream>

namespace sy {

std::string Communicator::where(const char* op) const {
  std::ostringstream s;
  s << op << " on group " << name_ << " (rank " << rank_ << " of " << size_ << ")";
  return s.str();
}

void Communicator::check_tensor(const char* op, const char* arg, const Tensor& t) const {
  SY_CHECK(t.defined() || t.numel() == 0) << where(op) << ": " << arg << " is not set";
  SY_CHECK(t.is_contiguous()) << where(op) << ": " << arg << " must be contiguous, got " << t.describe();
  SY_CHECK(t.device() == device()) << where(op) << ": " << arg << " is on " << device_name(t.device())
                                   << " but this communicator moves " << device_name(device()) << " tensors";
}

void Communicator::check_rows_divisible(const char* op, const Tensor& big, const Tensor& small) const {
  SY_CHECK(big.dtype() == small.dtype()) << where(op) << ": dtypes differ (" << big.describe() << " and "
                                         << small.describe() << ")";
  SY_CHECK(big.numel() == small.numel() * size_)
      << where(op) << ": the full tensor must hold " << size_ << " x the shard, got " << big.describe() << " and "
      << small.describe();
}

std::int64_t Communicator::check_row_operands(const char* op, const Tensor& send, const Tensor& recv) const {
  check_tensor(op, "send", send);
  check_tensor(op, "recv", recv);
  SY_CHECK(send.dtype() == recv.dtype()) << where(op) << ": send is " << send.describe() << ", recv is "
                                         << recv.describe();
  SY_CHECK(send.dim() >= 1 && recv.dim() >= 1) << where(op) << ": send and recv need a row axis";
  const std::int64_t row = send.size(0) ? send.numel() / send.size(0) : 0;
  const std::int64_t recv_row = recv.size(0) ? recv.numel() / recv.size(0) : 0;
  SY_CHECK(send.size(0) == 0 || recv.size(0) == 0 || row == recv_row)
      << where(op) << ": rows of send (" << send.describe() << ") and recv (" << recv.describe() << ") differ";
  return send.size(0) ? row : recv_row;
}

std::int64_t Communicator::check_all_to_all(const Tensor& send, std::span<const std::int64_t> send_counts,
                                            const Tensor& recv, std::span<const std::int64_t> recv_counts) const {
  const char* op = "all_to_all";
  const std::int64_t row = check_row_operands(op, send, recv);
  SY_CHECK(std::int64_t(send_counts.size()) == size_ && std::int64_t(recv_counts.size()) == size_)
      << where(op) << ": need one count per peer (" << size_ << "), got " << send_counts.size() << " send and "
      << recv_counts.size() << " recv counts";
  std::int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < size_; ++p) {
    SY_CHECK(send_counts[std::size_t(p)] >= 0 && recv_counts[std::size_t(p)] >= 0)
        << where(op) << ": negative count for peer " << p;
    send_total += send_counts[std::size_t(p)];
    recv_total += recv_counts[std::size_t(p)];
  }
  SY_CHECK(send_total <= send.size(0)) << where(op) << ": send counts add up to " << send_total << " rows but send has "
                                       << send.size(0);
  SY_CHECK(recv_total <= recv.size(0)) << where(op) << ": recv counts add up to " << recv_total << " rows but recv has "
                                       << recv.size(0);
  return row;
}

std::size_t Communicator::check_exchange(const Tensor& send, std::span<const RowBlock> sends, const Tensor& recv,
                                         std::span<const RowBlock> recvs) const {
  const char* op = "exchange";
  const std::int64_t row = check_row_operands(op, send, recv);
  auto check_blocks = [&](const char* arg, std::span<const RowBlock> blocks, const Tensor& t) {
    for (const RowBlock& b : blocks) {
      SY_CHECK(b.peer >= 0 && b.peer < size_) << where(op) << ": a " << arg << " block names peer " << b.peer
                                              << ", not a rank of the group";
      SY_CHECK(b.first >= 0 && b.rows >= 0 && b.first + b.rows <= t.size(0))
          << where(op) << ": " << arg << " block of rows [" << b.first << ", " << b.first + b.rows
          << ") is outside " << t.describe();
    }
  };
  check_blocks("send", sends, send);
  check_blocks("recv", recvs, recv);
  return std::size_t(row) * dtype_size(send.dtype());
}

std::unique_ptr<Communicator> make_world(Device device) {
  return device == Device::cuda ? make_nccl_world() : make_mpi_world();
}

}  // namespace sy
