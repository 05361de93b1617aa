// Devices and streams. Every op takes a StreamRef: on CUDA tensors the op is enqueued on that
// stream (a null handle is the legacy default stream); on CPU tensors it runs at once.
#pragma once

#include <string>

#include "core/dtype.h"

namespace sy {

// Number of usable CUDA devices: 0 in a CPU-only build or on a machine without a GPU.
int cuda_device_count();
void set_cuda_device(int index);
// One line naming the device, e.g. "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)".
std::string cuda_device_description(int index);

struct StreamRef {
  void* handle = nullptr;  // cudaStream_t on the CUDA backend
};

// Owns a non-blocking CUDA stream; in a CPU-only build it holds nothing.
class Stream {
 public:
  Stream() = default;
  static Stream create();  // on the current CUDA device
  ~Stream();
  Stream(Stream&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  StreamRef ref() const { return StreamRef{handle_}; }
  operator StreamRef() const { return ref(); }
  void synchronize() const;

 private:
  void* handle_ = nullptr;
};

void synchronize(StreamRef stream);
void device_synchronize();
// Brackets a region for an external profiler started with "profile from start" off (Nsight
// Compute's --profile-from-start off): the device is synchronized first, so the region holds
// exactly the work issued between the two calls. No-ops without a GPU.
void profiler_start();
void profiler_stop();

// Device-side timer for benchmarks: events recorded on a stream.
class EventTimer {
 public:
  explicit EventTimer(StreamRef stream);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  double stop_ms();  // records the stop event, waits for it, returns elapsed milliseconds

 private:
  StreamRef stream_;
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace sy
