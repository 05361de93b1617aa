// Helpers for multi-rank tests (label mpi). The binary is started by CTest under
// `mpirun -np 2` and `-np 4`; tests/mpi_main.cpp initialises MPI, and every rank runs every test
// and asserts. A failure on any rank fails the run.
#pragma once

#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"
#include "tests/testing.h"

namespace sy::test {

MpiRuntime& mpi_runtime();
// The world communicator for a device, created on first use and kept for the whole run:
// MPI for Device::cpu, NCCL for Device::cuda.
Communicator& world(Device device);
// Whether NCCL tests can run: every rank of this node has a GPU of its own.
bool nccl_available();

// Skips a test parameterised by device when that device's backend cannot run here.
#define SY_REQUIRE_BACKEND(device)                                                                   \
  do {                                                                                               \
    if ((device) == ::sy::Device::cuda && !::sy::test::nccl_available()) GTEST_SKIP() << "no GPU per rank"; \
  } while (0)

// Names tests parameterised by device: "Collective/cpu".
std::string device_param_name(const ::testing::TestParamInfo<Device>& info);

}  // namespace sy::test

namespace sy {
inline void PrintTo(Device device, std::ostream* os) { *os << device_name(device); }
}  // namespace sy
