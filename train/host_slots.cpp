#include "train/host_slots.h"

#include "core/check.h"

namespace sy {

HostSlots::HostSlots(Device device, const Shape& shape, DType dtype, int tensors) : tensors_(tensors) {
  SY_CHECK(tensors > 0) << "HostSlots: " << tensors << " tensors per slot";
  for (int i = 0; i < kSlots * tensors; ++i) buffers_.push_back(OwnedTensor::pinned_host(shape, dtype));
  for (int i = 0; i < kSlots; ++i) done_.push_back(std::make_unique<StreamEvent>(device));
}

int HostSlots::acquire() {
  const int slot = next_;
  next_ = (next_ + 1) % kSlots;
  wait(slot);
  return slot;
}

void HostSlots::release(int slot, StreamRef stream) { done_[std::size_t(slot)]->record(stream); }

void HostSlots::wait(int slot) const { done_[std::size_t(slot)]->synchronize(); }

}  // namespace sy
