// Pinned host buffers that a stream copies from or into, taken in turn, each with an event for
// the last copy that used it: the host fills slot i + 1 while the device still copies slot i.
#pragma once

#include <memory>
#include <vector>

#include "core/storage.h"
#include "parallel/stream_event.h"

namespace sy {

class HostSlots {
 public:
  static constexpr int kSlots = 2;
  // Every slot holds `tensors` host tensors of `shape` and `dtype`; events on `device`.
  HostSlots(Device device, const Shape& shape, DType dtype, int tensors);

  // The next slot in turn, once the device copies that last used it are done.
  int acquire();
  const Tensor& tensor(int slot, int index) const { return buffers_[std::size_t(slot * tensors_ + index)].view(); }
  // Marks the end of the copies just enqueued on `stream` that use `slot`.
  void release(int slot, StreamRef stream);
  // Waits until those copies are done (for a copy into the slot: its values are there).
  void wait(int slot) const;

 private:
  int tensors_;
  int next_ = 0;
  std::vector<OwnedTensor> buffers_;
  std::vector<std::unique_ptr<StreamEvent>> done_;
};

}  // namespace sy
