// Streams, device selection and event timers; without the CUDA backend only the CPU exists.
#include "core/stream.h"

#include <cstdio>
#include <utility>

#include "core/check.h"
#ifdef SY_WITH_CUDA
#include <cuda_profiler_api.h>

#include "core/cuda_check.h"
#endif

namespace sy {

#ifdef SY_WITH_CUDA

int cuda_device_count() {
  // Asked once: no driver or no device is not an error here, the caller falls back to the CPU.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

void set_cuda_device(int index) { SY_CUDA(cudaSetDevice(index)); }

std::string cuda_device_description(int index) {
  cudaDeviceProp prop{};
  SY_CUDA(cudaGetDeviceProperties(&prop, index));
  char line[768];
  std::snprintf(line, sizeof line, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, double(prop.totalGlobalMem) / (1 << 30));
  return line;
}

Stream Stream::create() {
  Stream s;
  cudaStream_t handle = nullptr;
  SY_CUDA(cudaStreamCreateWithFlags(&handle, cudaStreamNonBlocking));
  s.handle_ = handle;
  return s;
}

Stream::~Stream() {
  if (handle_) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}

void Stream::synchronize() const { sy::synchronize(ref()); }

void synchronize(StreamRef stream) {
  if (cuda_device_count() == 0) return;  // CPU work is already complete
  SY_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(stream.handle)));
}
void device_synchronize() {
  if (cuda_device_count() > 0) SY_CUDA(cudaDeviceSynchronize());
}

void profiler_start() {
  if (cuda_device_count() == 0) return;
  device_synchronize();
  SY_CUDA(cudaProfilerStart());
}

void profiler_stop() {
  if (cuda_device_count() == 0) return;
  device_synchronize();
  SY_CUDA(cudaProfilerStop());
}

EventTimer::EventTimer(StreamRef stream) : stream_(stream) {
  cudaEvent_t a, b;
  SY_CUDA(cudaEventCreate(&a));
  SY_CUDA(cudaEventCreate(&b));
  start_ = a;
  stop_ = b;
}
EventTimer::~EventTimer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}
void EventTimer::start() {
  SY_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(start_), static_cast<cudaStream_t>(stream_.handle)));
}
double EventTimer::stop_ms() {
  SY_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(stop_), static_cast<cudaStream_t>(stream_.handle)));
  SY_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)));
  float ms = 0;
  SY_CUDA(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)));
  return ms;
}

#else  // CPU-only build

int cuda_device_count() { return 0; }
void set_cuda_device(int) { SY_FAIL() << "this build has no CUDA backend (configure with nvcc on PATH)"; }
std::string cuda_device_description(int) { return "none (CPU-only build)"; }
Stream Stream::create() { return Stream(); }
Stream::~Stream() = default;
void Stream::synchronize() const {}
void synchronize(StreamRef) {}
void device_synchronize() {}
void profiler_start() {}
void profiler_stop() {}
EventTimer::EventTimer(StreamRef stream) : stream_(stream) {}
EventTimer::~EventTimer() = default;
void EventTimer::start() { SY_FAIL() << "EventTimer needs the CUDA backend"; }
double EventTimer::stop_ms() { SY_FAIL() << "EventTimer needs the CUDA backend"; }

#endif

Stream& Stream::operator=(Stream&& other) noexcept {
  std::swap(handle_, other.handle_);
  return *this;
}

}  // namespace sy
