// Median-of-repeats timing shared by every benchmark.
#include "bench/timing.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace sy::bench {

Timing time_repeated(const std::function<void()>& body, bool on_gpu, StreamRef stream, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) body();
  if (on_gpu) synchronize(stream);
  std::vector<double> ms;
  ms.reserve(std::size_t(repeats));
  if (on_gpu) {
    EventTimer timer(stream);
    for (int i = 0; i < repeats; ++i) {
      timer.start();
      body();
      ms.push_back(timer.stop_ms());
    }
  } else {
    for (int i = 0; i < repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      body();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::sort(ms.begin(), ms.end());
  return Timing{ms[ms.size() / 2], ms.front(), repeats};
}

}  // namespace sy::bench
