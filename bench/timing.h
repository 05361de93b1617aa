// Benchmark timing: warm-up, then the median of repeated runs timed with device events (GPU)
// or the steady clock (CPU).
#pragma once

#include <functional>

#include "core/stream.h"

namespace sy::bench {

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  int repeats = 0;
};

// Times `body` after `warmup` untimed calls. On CUDA each repeat is bracketed by events on
// `stream`; on the CPU by the host clock.
Timing time_repeated(const std::function<void()>& body, bool on_gpu, StreamRef stream, int warmup = 3,
                     int repeats = 10);

}  // namespace sy::bench

#include <string>

#include "core/storage.h"

namespace sy::bench {

// Normal(0, 1) values drawn on the device itself (never zeros: they run faster than real data).
OwnedTensor random_input(const Shape& shape, DType dtype, Device device, std::uint64_t seed, StreamRef stream = {});
// "773.3 TFLOP/s" on a GPU, "12.40 GFLOP/s" on the CPU backend.
std::string flops_text(double tflops);
// Median TFLOP/s of a dense GEMM sized for the device (8192^3 bf16 on GPU, 512^3 f32 on CPU):
// the ceiling other figures are compared with.
double dense_gemm_ceiling_tflops(Device device, StreamRef stream, int repeats = 10);

}  // namespace sy::bench
