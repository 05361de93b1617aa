// Communicator over MPI for CPU tensors. Calls complete before returning. bf16 moves as 16-bit
// words; its reductions use a user-defined MPI op that adds in fp32 and rounds once.
#include <climits>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace sy {
namespace {

void bf16_reduce(void* in, void* inout, int* count, MPI_Datatype*, bool is_max) {
  const auto* a = static_cast<const bfloat16*>(in);
  auto* b = static_cast<bfloat16*>(inout);
  for (int i = 0; i < *count; ++i) {
    const float x = float(a[i]), y = float(b[i]);
    b[i] = bfloat16(is_max ? (x > y ? x : y) : x + y);
  }
}
void bf16_sum(void* in, void* inout, int* count, MPI_Datatype* type) { bf16_reduce(in, inout, count, type, false); }
void bf16_max(void* in, void* inout, int* count, MPI_Datatype* type) { bf16_reduce(in, inout, count, type, true); }

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::bf16: return MPI_UINT16_T;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(DType dtype, ReduceOp op) {
  if (dtype != DType::bf16) return op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
  // Created once, freed by MPI_Finalize.
  static MPI_Op sum = MPI_OP_NULL, max = MPI_OP_NULL;
  if (sum == MPI_OP_NULL) {
    SY_MPI(MPI_Op_create(&bf16_sum, 1, &sum));
    SY_MPI(MPI_Op_create(&bf16_max, 1, &max));
  }
  return op == ReduceOp::sum ? sum : max;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
      : Communicator(std::move(name), comm_rank(comm), comm_size(comm)), comm_(comm), owned_(owned) {}
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  Device device() const override { return Device::cpu; }
  MPI_Comm handle() const { return comm_; }

  void all_reduce(const Tensor& data, ReduceOp op, StreamRef) override {
    check_tensor("all_reduce", "data", data);
    check(MPI_Allreduce(MPI_IN_PLACE, data.data(), count("all_reduce", data.numel()), mpi_type(data.dtype()),
                        mpi_op(data.dtype(), op), comm_),
          "all_reduce");
  }

  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op, StreamRef) override {
    check_tensor("reduce_scatter", "input", input);
    check_tensor("reduce_scatter", "output", output);
    check_rows_divisible("reduce_scatter", input, output);
    check(MPI_Reduce_scatter_block(input.data(), output.data(), count("reduce_scatter", output.numel()),
                                   mpi_type(output.dtype()), mpi_op(output.dtype(), op), comm_),
          "reduce_scatter");
  }

  void all_gather(const Tensor& input, const Tensor& output, StreamRef) override {
    check_tensor("all_gather", "input", input);
    check_tensor("all_gather", "output", output);
    check_rows_divisible("all_gather", output, input);
    const int n = count("all_gather", input.numel());
    check(MPI_Allgather(input.data(), n, mpi_type(input.dtype()), output.data(), n, mpi_type(input.dtype()), comm_),
          "all_gather");
  }

  void broadcast(const Tensor& data, int root, StreamRef) override {
    check_tensor("broadcast", "data", data);
    SY_CHECK(root >= 0 && root < size()) << where("broadcast") << ": root " << root << " is not a rank of the group";
    check(MPI_Bcast(data.data(), count("broadcast", data.numel()), mpi_type(data.dtype()), root, comm_), "broadcast");
  }

  void barrier(StreamRef) override { check(MPI_Barrier(comm_), "barrier"); }

  void all_to_all(const Tensor& send, std::span<const std::int64_t> send_counts, const Tensor& recv,
                  std::span<const std::int64_t> recv_counts, StreamRef) override {
    const std::int64_t row_elements = check_all_to_all(send, send_counts, recv, recv_counts);
    // Counts and offsets in rows, through a row datatype, so int counts reach 2^31 rows.
    MPI_Datatype row_type;
    const std::int64_t row_bytes = row_elements * std::int64_t(dtype_size(send.dtype()));
    check(MPI_Type_contiguous(count("all_to_all", row_bytes), MPI_BYTE, &row_type), "all_to_all");
    check(MPI_Type_commit(&row_type), "all_to_all");
    const auto peers = static_cast<std::size_t>(size());
    std::vector<int> sc(peers), sd(peers), rc(peers), rd(peers);
    std::int64_t send_offset = 0, recv_offset = 0;
    for (std::size_t p = 0; p < sc.size(); ++p) {
      sc[p] = count("all_to_all", send_counts[p]);
      rc[p] = count("all_to_all", recv_counts[p]);
      sd[p] = count("all_to_all", send_offset);
      rd[p] = count("all_to_all", recv_offset);
      send_offset += send_counts[p];
      recv_offset += recv_counts[p];
    }
    const int status =
        MPI_Alltoallv(send.data(), sc.data(), sd.data(), row_type, recv.data(), rc.data(), rd.data(), row_type, comm_);
    MPI_Type_free(&row_type);
    check(status, "all_to_all");
  }

  // Non-blocking sends and receives with one tag: MPI matches messages between a pair of ranks in
  // the order they were posted, which is the block order the interface promises.
  void exchange(const Tensor& send, std::span<const RowBlock> sends, const Tensor& recv,
                std::span<const RowBlock> recvs, StreamRef) override {
    const std::size_t row_bytes = check_exchange(send, sends, recv, recvs);
    for (const auto blocks : {sends, recvs})  // every count fits an int before anything is posted
      for (const RowBlock& b : blocks) count("exchange", b.rows);
    MPI_Datatype row_type;
    check(MPI_Type_contiguous(count("exchange", std::int64_t(row_bytes)), MPI_BYTE, &row_type), "exchange");
    check(MPI_Type_commit(&row_type), "exchange");
    std::vector<MPI_Request> requests;
    requests.reserve(sends.size() + recvs.size());
    int status = MPI_SUCCESS;
    for (const RowBlock& b : recvs) {
      if (!b.rows || status != MPI_SUCCESS) continue;
      requests.emplace_back();
      status = MPI_Irecv(static_cast<char*>(recv.data()) + std::size_t(b.first) * row_bytes,
                         int(b.rows), row_type, b.peer, 0, comm_, &requests.back());
    }
    for (const RowBlock& b : sends) {
      if (!b.rows || status != MPI_SUCCESS) continue;
      requests.emplace_back();
      status = MPI_Isend(static_cast<const char*>(send.data()) + std::size_t(b.first) * row_bytes,
                         int(b.rows), row_type, b.peer, 0, comm_, &requests.back());
    }
    if (status != MPI_SUCCESS) requests.pop_back();  // the failed call's request was never started
    const int waited = MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    MPI_Type_free(&row_type);
    check(status, "exchange");
    check(waited, "exchange");
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    MPI_Comm sub = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    check(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN), "split");
    return std::make_unique<MpiCommunicator>(sub, name, true);
  }

 private:
  static int comm_rank(MPI_Comm comm) {
    int r = 0;
    SY_MPI(MPI_Comm_rank(comm, &r));
    return r;
  }
  static int comm_size(MPI_Comm comm) {
    int s = 0;
    SY_MPI(MPI_Comm_size(comm, &s));
    return s;
  }
  int count(const char* op, std::int64_t n) const {
    SY_CHECK(n <= INT_MAX) << where(op) << ": " << n << " elements exceed MPI's int count";
    return int(n);
  }
  void check(int status, const char* op) const {
    if (status != MPI_SUCCESS) SY_FAIL_AS(ErrorKind::mpi) << where(op) << " failed: " << mpi_error_text(status);
  }

  MPI_Comm comm_;
  bool owned_;
};

}  // namespace

MPI_Comm mpi_handle(const Communicator& comm) {
  const auto* mpi = dynamic_cast<const MpiCommunicator*>(&comm);
  SY_CHECK(mpi != nullptr) << "group " << comm.name() << " moves " << device_name(comm.device())
                           << " tensors over NCCL and has no MPI communicator";
  return mpi->handle();
}

std::unique_ptr<Communicator> make_mpi_world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  SY_CHECK(initialized) << "make_mpi_world: MPI is not initialised (create an MpiRuntime first)";
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", false);
}

}  // namespace sy
