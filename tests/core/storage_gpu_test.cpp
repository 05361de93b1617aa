// Pinned host buffers and copy_async: a round trip through the GPU on a stream, complete once
// an event after the copies is waited for.
#include "core/storage.h"
#include "parallel/stream_event.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(StorageGpu, PinnedHostRoundTripWithCopyAsync) {
  SY_REQUIRE_GPU();
  Stream stream = Stream::create();
  OwnedTensor up = OwnedTensor::pinned_host({1000}, DType::i32), down = OwnedTensor::pinned_host({1000}, DType::i32);
  OwnedTensor device({1000}, DType::i32, Device::cuda);
  for (int i = 0; i < 1000; ++i) {
    up.view().ptr<std::int32_t>()[i] = 7 * i - 3;
    down.view().ptr<std::int32_t>()[i] = 0;
  }
  StreamEvent done(Device::cuda);
  copy_async(device, up, stream.ref());
  copy_async(down, device, stream.ref());
  done.record(stream.ref());
  done.synchronize();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(down.view().ptr<std::int32_t>()[i], 7 * i - 3) << "element " << i;
}

}  // namespace
}  // namespace sy::test
