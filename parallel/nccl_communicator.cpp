// Communicator over NCCL for GPU tensors: calls are enqueued on the given stream. The world
// communicator is created from a unique id broadcast over MPI; sub-groups by ncclCommSplit.
// all_to_all with per-peer counts is a group of ncclSend/ncclRecv. Waits that NCCL could hang
// in (barrier) poll for asynchronous errors and give up after a timeout, aborting the
// communicator, so a dead peer ends the job with a message instead of a silent hang.
#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

#ifdef SY_WITH_CUDA

#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/cuda_check.h"
#include "core/storage.h"

namespace sy {
namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

cudaStream_t to_cuda(StreamRef stream) { return static_cast<cudaStream_t>(stream.handle); }

// Seconds a blocking wait may last before the job is declared hung (SY_NCCL_TIMEOUT_S).
double wait_timeout_s() {
  const char* text = std::getenv("SY_NCCL_TIMEOUT_S");
  return text ? std::atof(text) : 600.0;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::string name, int rank, int size)
      : Communicator(std::move(name), rank, size), comm_(comm), scratch_(Device::cuda, sizeof(float)) {}
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  Device device() const override { return Device::cuda; }

  void all_reduce(const Tensor& data, ReduceOp op, StreamRef stream) override {
    check_tensor("all_reduce", "data", data);
    check(ncclAllReduce(data.data(), data.data(), std::size_t(data.numel()), nccl_type(data.dtype()), nccl_op(op),
                        comm_, to_cuda(stream)),
          "all_reduce");
  }

  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, StreamRef stream) override {
    check_tensor("reduce_scatter", "input", input);
    check_tensor("reduce_scatter", "output", output);
    check_rows_divisible("reduce_scatter", input, output);
    check(ncclReduceScatter(input.data(), output.data(), std::size_t(output.numel()), nccl_type(output.dtype()),
                            nccl_op(op), comm_, to_cuda(stream)),
          "reduce_scatter");
  }

  void all_gather(const Tensor& input, const Tensor& output, StreamRef stream) override {
    check_tensor("all_gather", "input", input);
    check_tensor("all_gather", "output", output);
    check_rows_divisible("all_gather", output, input);
    check(ncclAllGather(input.data(), output.data(), std::size_t(input.numel()), nccl_type(input.dtype()), comm_,
                        to_cuda(stream)),
          "all_gather");
  }

  void broadcast(const Tensor& data, int root, StreamRef stream) override {
    check_tensor("broadcast", "data", data);
    SY_CHECK(root >= 0 && root < size()) << where("broadcast") << ": root " << root << " is not a rank of the group";
    check(ncclBroadcast(data.data(), data.data(), std::size_t(data.numel()), nccl_type(data.dtype()), root, comm_,
                        to_cuda(stream)),
          "broadcast");
  }

  // A one-float all-reduce, then a guarded wait for it.
  void barrier(StreamRef stream) override {
    check(ncclAllReduce(scratch_.data(), scratch_.data(), 1, ncclFloat32, ncclSum, comm_, to_cuda(stream)), "barrier");
    wait(stream, "barrier");
  }

  void all_to_all(const Tensor& send, std::span<const std::int64_t> send_counts, const Tensor& recv,
                  std::span<const std::int64_t> recv_counts, StreamRef stream) override {
    const std::int64_t row_elements = check_all_to_all(send, send_counts, recv, recv_counts);
    const std::size_t row_bytes = std::size_t(row_elements) * dtype_size(send.dtype());
    const char* send_bytes = static_cast<const char*>(send.data());
    char* recv_bytes = static_cast<char*>(recv.data());
    // Bytes as the wire type: every dtype moves unchanged, and counts stay exact.
    check(ncclGroupStart(), "all_to_all");
    std::size_t send_offset = 0, recv_offset = 0;
    for (int p = 0; p < size(); ++p) {
      const std::size_t s = std::size_t(send_counts[std::size_t(p)]) * row_bytes;
      const std::size_t r = std::size_t(recv_counts[std::size_t(p)]) * row_bytes;
      if (s) check(ncclSend(send_bytes + send_offset, s, ncclUint8, p, comm_, to_cuda(stream)), "all_to_all");
      if (r) check(ncclRecv(recv_bytes + recv_offset, r, ncclUint8, p, comm_, to_cuda(stream)), "all_to_all");
      send_offset += s;
      recv_offset += r;
    }
    check(ncclGroupEnd(), "all_to_all");
  }

  // One group of sends and receives; NCCL runs the ones between a pair of ranks in order.
  void exchange(const Tensor& send, std::span<const RowBlock> sends, const Tensor& recv,
                std::span<const RowBlock> recvs, StreamRef stream) override {
    const std::size_t row_bytes = check_exchange(send, sends, recv, recvs);
    const char* send_bytes = static_cast<const char*>(send.data());
    char* recv_bytes = static_cast<char*>(recv.data());
    check(ncclGroupStart(), "exchange");
    for (const RowBlock& b : sends)
      if (b.rows)
        check(ncclSend(send_bytes + std::size_t(b.first) * row_bytes, std::size_t(b.rows) * row_bytes, ncclUint8,
                       b.peer, comm_, to_cuda(stream)),
              "exchange");
    for (const RowBlock& b : recvs)
      if (b.rows)
        check(ncclRecv(recv_bytes + std::size_t(b.first) * row_bytes, std::size_t(b.rows) * row_bytes, ncclUint8,
                       b.peer, comm_, to_cuda(stream)),
              "exchange");
    check(ncclGroupEnd(), "exchange");
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    ncclComm_t sub = nullptr;
    check(ncclCommSplit(comm_, color, key, &sub, nullptr), "split");
    SY_CHECK_AS(ErrorKind::nccl, sub != nullptr) << where("split") << ": NCCL returned no communicator for color "
                                                 << color;
    int rank = 0, count = 0;
    check(ncclCommUserRank(sub, &rank), "split");
    check(ncclCommCount(sub, &count), "split");
    return std::make_unique<NcclCommunicator>(sub, name, rank, count);
  }

 private:
  void check(ncclResult_t status, const char* op) const {
    if (status == ncclSuccess) return;
    const char* detail = ncclGetLastError(comm_);
    SY_FAIL_AS(ErrorKind::nccl) << where(op) << " failed: " << ncclGetErrorString(status)
                                << (detail && *detail ? std::string(" (") + detail + ")" : std::string());
  }

  // Waits for `stream`, checking NCCL's asynchronous error state; on an error or after the
  // timeout the communicator is aborted so the process can exit instead of hanging.
  void wait(StreamRef stream, const char* op) {
    const auto start = std::chrono::steady_clock::now();
    const double timeout_s = wait_timeout_s();
    while (true) {
      const cudaError_t state = cudaStreamQuery(to_cuda(stream));
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) SY_CUDA(state);
      ncclResult_t async = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &async), op);
      if (async != ncclSuccess) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        SY_FAIL_AS(ErrorKind::nccl) << where(op) << " failed asynchronously: " << ncclGetErrorString(async);
      }
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > timeout_s) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        SY_FAIL_AS(ErrorKind::nccl) << where(op) << " did not complete in " << timeout_s
                                    << " s (a peer may have failed; SY_NCCL_TIMEOUT_S sets the limit)";
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  ncclComm_t comm_;
  Storage scratch_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  SY_CHECK(initialized) << "make_nccl_world: MPI is not initialised (create an MpiRuntime first)";
  int rank = 0, size = 0;
  SY_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  SY_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
  ncclUniqueId id{};
  if (rank == 0) {
    const ncclResult_t status = ncclGetUniqueId(&id);
    SY_CHECK_AS(ErrorKind::nccl, status == ncclSuccess) << "ncclGetUniqueId failed: " << ncclGetErrorString(status);
  }
  SY_MPI(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
  ncclComm_t comm = nullptr;
  const ncclResult_t status = ncclCommInitRank(&comm, size, id, rank);
  SY_CHECK_AS(ErrorKind::nccl, status == ncclSuccess)
      << "ncclCommInitRank on group world (rank " << rank << " of " << size << ") failed: " << ncclGetErrorString(status);
  return std::make_unique<NcclCommunicator>(comm, "world", rank, size);
}

}  // namespace sy

#else  // CPU-only build

namespace sy {
std::unique_ptr<Communicator> make_nccl_world() {
  SY_FAIL() << "make_nccl_world: this build has no CUDA backend, so GPU tensors cannot be communicated";
}
}  // namespace sy

#endif
