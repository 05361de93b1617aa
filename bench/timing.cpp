// Median-of-repeats timing shared by every benchmark.
#include "bench/timing.h"

#include "core/ops.h"

#include <algorithm>
#include <cstdio>
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

OwnedTensor random_input(const Shape& shape, DType dtype, Device device, std::uint64_t seed, StreamRef stream) {
  OwnedTensor t(shape, dtype, device);
  fill_normal(t, RngKey{seed, std::uint32_t(RngPurpose::test), 7}, 0.0f, 1.0f, 0, stream);
  return t;
}

std::string flops_text(double tflops) {
  char text[32];
  if (tflops >= 1.0) {
    std::snprintf(text, sizeof text, "%7.1f TFLOP/s", tflops);
  } else {
    std::snprintf(text, sizeof text, "%7.2f GFLOP/s", tflops * 1e3);
  }
  return text;
}

double dense_gemm_ceiling_tflops(Device device, StreamRef stream, int repeats) {
  const bool gpu = device == Device::cuda;
  const std::int64_t n = gpu ? 8192 : 512;
  const DType dtype = gpu ? DType::bf16 : DType::f32;
  OwnedTensor a = random_input({n, n}, dtype, device, 2, stream), b = random_input({n, n}, dtype, device, 3, stream);
  OwnedTensor c({n, n}, dtype, device);
  const Timing t = time_repeated([&] { gemm(a, b, c, false, false, 1.0f, 0.0f, stream); }, gpu, stream, 3, repeats);
  return 2.0 * double(n) * double(n) * double(n) / t.median_ms * 1e-9;
}

}  // namespace sy::bench
