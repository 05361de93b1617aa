// Communicator: the collectives a parallel training step needs, over one group of ranks.
// Two backends behind one interface: MPI moves CPU tensors, NCCL moves GPU tensors. Calls are
// enqueued on `stream` (NCCL) or complete before returning (MPI). Every error names the
// operation, the group and the rank.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/stream.h"
#include "core/tensor.h"

namespace sy {

enum class ReduceOp { sum, max };

// A run of rows of an exchange() operand: rows [first, first + rows) go to (or come from) `peer`.
struct RowBlock {
  int peer = 0;
  std::int64_t first = 0;
  std::int64_t rows = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  const std::string& name() const { return name_; }  // the group's role: "world", "tp", "dp", "ep", "edp"
  int rank() const { return rank_; }                 // this process's index in the group
  int size() const { return size_; }
  virtual Device device() const = 0;  // cpu for MPI, cuda for NCCL

  // data: any contiguous tensor, reduced in place over the group.
  virtual void all_reduce(const Tensor& data, ReduceOp op, StreamRef stream = {}) = 0;
  // input: [size * n, ...]; output: [n, ...] = reduction over ranks of input rows
  // [rank * n, (rank + 1) * n).
  virtual void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, StreamRef stream = {}) = 0;
  // input: [n, ...]; output: [size * n, ...], rank r's input at rows [r * n, (r + 1) * n).
  virtual void all_gather(const Tensor& input, const Tensor& output, StreamRef stream = {}) = 0;
  // data: replaced by root's data on every rank.
  virtual void broadcast(const Tensor& data, int root, StreamRef stream = {}) = 0;
  // Returns when every rank of the group has reached it (the stream's work is complete first).
  virtual void barrier(StreamRef stream = {}) = 0;
  // Rows (axis 0) move between ranks: send holds send_counts[p] rows for peer p, peers in
  // order; recv receives recv_counts[p] rows from peer p, in order. Counts may be uneven or
  // zero; sum(send_counts) <= send.size(0) and sum(recv_counts) <= recv.size(0).
  virtual void all_to_all(const Tensor& send, std::span<const std::int64_t> send_counts, const Tensor& recv,
                          std::span<const std::int64_t> recv_counts, StreamRef stream = {}) = 0;
  // Point-to-point rows in one step: each block of `sends` (rows of send) goes to its peer and each
  // block of `recvs` (rows of recv) is filled from its peer. Between two ranks, blocks pair up in
  // the order listed: a rank's k-th send block to q is q's k-th receive block from it, with as
  // many rows. Blocks may point anywhere in their tensor, so the pieces of a pipelined all-to-all
  // land where the next step reads them, without a regrouping pass.
  virtual void exchange(const Tensor& send, std::span<const RowBlock> sends, const Tensor& recv,
                        std::span<const RowBlock> recvs, StreamRef stream = {}) = 0;
  // A sub-group: ranks with the same color, ordered by key. Collective over this group.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

 protected:
  Communicator(std::string name, int rank, int size) : name_(std::move(name)), rank_(rank), size_(size) {}
  // "all_reduce on group dp (rank 1 of 4)": the prefix of every error this group raises.
  std::string where(const char* op) const;
  // Shared argument checks; they throw naming the op and the group.
  void check_tensor(const char* op, const char* arg, const Tensor& t) const;
  void check_rows_divisible(const char* op, const Tensor& big, const Tensor& small) const;
  // Elements per row of send and recv, after checking that they are row tensors that agree.
  std::int64_t check_row_operands(const char* op, const Tensor& send, const Tensor& recv) const;
  // Elements per row of an all_to_all operand, after checking the counts.
  std::int64_t check_all_to_all(const Tensor& send, std::span<const std::int64_t> send_counts, const Tensor& recv,
                                std::span<const std::int64_t> recv_counts) const;
  // Bytes per row of the exchange operands, after checking the blocks against them.
  std::size_t check_exchange(const Tensor& send, std::span<const RowBlock> sends, const Tensor& recv,
                             std::span<const RowBlock> recvs) const;

 private:
  std::string name_;
  int rank_;
  int size_;
};

// The world group over MPI_COMM_WORLD for CPU tensors.
std::unique_ptr<Communicator> make_mpi_world();
// The world group over NCCL for GPU tensors (unique id broadcast over MPI). Each rank must have
// selected its GPU first (MpiRuntime does, by node-local rank).
std::unique_ptr<Communicator> make_nccl_world();
// make_mpi_world() for Device::cpu, make_nccl_world() for Device::cuda.
std::unique_ptr<Communicator> make_world(Device device);

}  // namespace sy
