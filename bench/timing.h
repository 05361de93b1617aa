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
