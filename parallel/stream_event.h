// StreamEvent: one CUDA event used to order work between streams (the gradient communication
// stream waits for backward, the compute stream waits for communication). On the CPU backend
// work completes when it is issued, so every call is a no-op.
#pragma once

#include "core/stream.h"

namespace sy {

class StreamEvent {
 public:
  // Creates a CUDA event (timing disabled) when `device` is cuda; nothing for the CPU.
  explicit StreamEvent(Device device);
  ~StreamEvent();
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;

  // Marks the current end of `stream`'s work.
  void record(StreamRef stream);
  // Makes `stream` wait, on the device, for the last record(); the host does not block. The
  // event may be recorded again at once: the wait holds the state it saw when enqueued.
  void wait_on(StreamRef stream) const;
  // Blocks the host until the work before the last record() is done.
  void synchronize() const;

 private:
  void* event_ = nullptr;  // cudaEvent_t
};

}  // namespace sy
