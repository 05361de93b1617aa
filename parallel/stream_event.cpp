// CUDA events for cross-stream ordering; without the CUDA backend there is nothing to order.
#include "parallel/stream_event.h"

#include "core/check.h"
#ifdef SY_WITH_CUDA
#include "core/cuda_check.h"
#endif

namespace sy {

#ifdef SY_WITH_CUDA

StreamEvent::StreamEvent(Device device) {
  if (device != Device::cuda) return;
  cudaEvent_t event = nullptr;
  SY_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  event_ = event;
}

StreamEvent::~StreamEvent() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void StreamEvent::record(StreamRef stream) {
  if (event_) SY_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream.handle)));
}

void StreamEvent::wait_on(StreamRef stream) const {
  if (event_)
    SY_CUDA(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream.handle), static_cast<cudaEvent_t>(event_), 0));
}

void StreamEvent::synchronize() const {
  if (event_) SY_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

#else  // CPU-only build

StreamEvent::StreamEvent(Device device) {
  SY_CHECK(device == Device::cpu) << "StreamEvent: this build has no CUDA backend";
}
StreamEvent::~StreamEvent() = default;
void StreamEvent::record(StreamRef) {}
void StreamEvent::wait_on(StreamRef) const {}
void StreamEvent::synchronize() const {}

#endif

}  // namespace sy
