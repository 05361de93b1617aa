// main() of the multi-rank test binary: MPI is initialised once for all tests; rank 0 prints
// the usual gtest output, other ranks print only their failures (prefixed with their rank);
// the exit code is non-zero on every rank if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>

#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

MpiRuntime* g_runtime = nullptr;

// Prints failed assertions of a non-zero rank, since its default printer is removed.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                   result.line_number(), result.summary());
    }
  }

 private:
  int rank_;
};

}  // namespace

MpiRuntime& mpi_runtime() { return *g_runtime; }

Communicator& world(Device device) {
  static std::map<Device, std::unique_ptr<Communicator>> worlds;
  std::unique_ptr<Communicator>& w = worlds[device];
  if (!w) w = make_world(device);
  return *w;
}

bool nccl_available() { return g_runtime->has_gpu_per_rank(); }

std::string device_param_name(const ::testing::TestParamInfo<Device>& info) { return device_name(info.param); }

}  // namespace sy::test

int main(int argc, char** argv) {
  sy::MpiRuntime runtime(&argc, &argv);
  sy::test::g_runtime = &runtime;
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new sy::test::RankFailurePrinter(runtime.world_rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (runtime.world_rank() == 0 && any_failed && !failed) std::fprintf(stderr, "a test failed on another rank\n");
  return any_failed;
}
