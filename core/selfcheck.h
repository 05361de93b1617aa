// The op self-check behind `switchyard selfcheck`: every op of core/ops.h runs forward and
// backward on fresh random inputs of awkward sizes and is compared with the float64 CPU
// reference on the same (rounded) inputs, on each device and dtype this build and machine offer.
#pragma once

#include <string>
#include <vector>

#include "core/dtype.h"

namespace sy {

struct SelfCheckResult {
  std::string op;
  Device device;
  DType dtype;
  double max_relative_error;  // over all outputs of the case
  double tolerance;
  bool passed;
};

// Runs every case on the CPU in f32 and, when a GPU is present, on CUDA in f32 and bf16.
std::vector<SelfCheckResult> run_selfcheck(std::uint64_t seed);

}  // namespace sy
