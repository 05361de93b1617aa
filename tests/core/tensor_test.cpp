// Tensor views, storage, the arena and error messages.
#include <string>

#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(Tensor, ContiguousStridesAreRowMajor) {
  Tensor t(nullptr, {2, 3, 5}, DType::bf16, Device::cpu);
  EXPECT_EQ(t.stride(0), 15);
  EXPECT_EQ(t.stride(1), 5);
  EXPECT_EQ(t.stride(-1), 1);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.bytes(), 60u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "bf16[2, 3, 5] cpu");
}

TEST(Tensor, SliceRowsAndSelectPointIntoTheSameMemory) {
  OwnedTensor owned({4, 3}, DType::f32, Device::cpu);
  const Tensor& t = owned.view();
  for (int i = 0; i < 12; ++i) t.ptr<float>()[i] = float(i);
  Tensor rows = t.slice_rows(1, 2);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.ptr<float>()[0], 3.0f);
  Tensor row = t.select(3);
  EXPECT_EQ(row.shape(), (Shape{3}));
  EXPECT_EQ(row.ptr<float>()[2], 11.0f);
}

TEST(Tensor, ColumnSliceIsStridedNotContiguous) {
  OwnedTensor owned({4, 6}, DType::f32, Device::cpu);
  Tensor cols = owned.view().as_strided({4, 2}, {6, 1}, 3);
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_EQ(cols.stride(0), 6);
  expect_error([&] { (void)cols.reshape({8}); }, ErrorKind::invalid_argument,
               "reshape needs a contiguous tensor, got f32[4, 2] cpu");
}

TEST(Tensor, WrongElementTypeAccessIsAnError) {
  OwnedTensor owned({2}, DType::bf16, Device::cpu);
  expect_error([&] { (void)owned.view().ptr<float>(); }, ErrorKind::invalid_argument,
               "tensor holds bf16, accessed as f32");
}

TEST(Tensor, ReshapeKeepsElementCount) {
  OwnedTensor owned({4, 6}, DType::f32, Device::cpu);
  EXPECT_EQ(owned.view().reshape({2, 12}).shape(), (Shape{2, 12}));
  expect_error([&] { (void)owned.view().reshape({5, 5}); }, ErrorKind::invalid_argument,
               "cannot reshape f32[4, 6] cpu to [5, 5]");
}

TEST(Arena, AllocationsAreAlignedAndResetReusesMemory) {
  Arena arena(Device::cpu, 4096);
  Tensor a = arena.alloc({3}, DType::f32);
  Tensor b = arena.alloc({5}, DType::bf16);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % Arena::kAlignment, 0u);
  EXPECT_EQ(static_cast<char*>(b.data()) - static_cast<char*>(a.data()), std::ptrdiff_t(Arena::kAlignment));
  const std::size_t peak = arena.peak();
  arena.reset();
  Tensor c = arena.alloc({3}, DType::f32);
  EXPECT_EQ(c.data(), a.data());
  EXPECT_EQ(arena.peak(), peak);
}

TEST(Arena, MarkAndReleaseFreeOnlyLaterAllocations) {
  Arena arena(Device::cpu, 4096);
  Tensor a = arena.alloc({8}, DType::f32);
  const std::size_t mark = arena.mark();
  Tensor b = arena.alloc({8}, DType::f32);
  arena.release_to(mark);
  Tensor c = arena.alloc({8}, DType::f32);
  EXPECT_EQ(c.data(), b.data());
  EXPECT_NE(c.data(), a.data());
}

TEST(Arena, OverflowNamesTheRequest) {
  Arena arena(Device::cpu, 1024);
  expect_error([&] { arena.alloc({1000}, DType::f32); }, ErrorKind::invalid_argument,
               "arena out of memory: f32[1000] cpu needs 4000 bytes, 1024 of 1024 left");
}

TEST(Arena, GrowableArenaAddsBlocksThenConsolidatesAtReset) {
  Arena arena(Device::cpu, 1024, Arena::Growth::growable);
  Tensor a = arena.alloc({200}, DType::f32);  // 800 bytes: fits the first block
  Tensor b = arena.alloc({100}, DType::f32);  // the rest of block 0 is too small: block 1 (512 bytes)
  Tensor c = arena.alloc({10}, DType::f32);   // block 1's rest is under one alignment: block 2
  EXPECT_EQ(arena.blocks(), 3u);
  for (Tensor* t : {&a, &b, &c}) fill_bytes(*t, 0x11);  // every byte handed out is writable
  EXPECT_EQ(arena.mark(), 1024u + 512u + 40u);  // offsets run on across blocks
  const std::size_t peak = arena.peak();
  arena.reset();
  EXPECT_EQ(arena.blocks(), 1u);
  EXPECT_EQ(arena.capacity(), peak);
  // The same step now fits in the one block, with no growth.
  arena.alloc({200}, DType::f32);
  arena.alloc({100}, DType::f32);
  arena.alloc({10}, DType::f32);
  EXPECT_EQ(arena.blocks(), 1u);
  EXPECT_EQ(arena.peak(), peak);
}

TEST(Arena, ReleaseAcrossBlocksReusesTheLaterBlock) {
  Arena arena(Device::cpu, 512, Arena::Growth::growable);
  arena.alloc({100}, DType::f32);
  const std::size_t mark = arena.mark();
  Tensor b = arena.alloc({200}, DType::f32);
  arena.release_to(mark);
  Tensor c = arena.alloc({200}, DType::f32);
  EXPECT_EQ(c.data(), b.data());
  EXPECT_EQ(arena.blocks(), 2u);
}

TEST(Check, MessageNamesRankFileAndLine) {
  set_error_rank(3);
  try {
    SY_CHECK_AS(ErrorKind::config, 1 + 1 == 3) << "model.d_model must be positive, got " << -4;
    FAIL() << "SY_CHECK did not throw";
  } catch (const Error& e) {
    set_error_rank(0);
    EXPECT_EQ(e.kind(), ErrorKind::config);
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("rank 3: tests/core/tensor_test.cpp:", 0), 0u) << msg;
    EXPECT_NE(msg.find(": model.d_model must be positive, got -4"), std::string::npos) << msg;
  }
}

TEST(Check, PassingCheckEvaluatesNoMessage) {
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  SY_CHECK(true) << count();
  EXPECT_EQ(evaluated, 0);
}

TEST(Storage, CopyBetweenHostTensorsNeedsMatchingShape) {
  OwnedTensor a({4}, DType::f32, Device::cpu), b({5}, DType::f32, Device::cpu);
  expect_error([&] { copy(b, a); }, ErrorKind::invalid_argument,
               "copy: f32[4] cpu into f32[5] cpu (dtype and size must match)");
}

TEST(Storage, CudaAllocationWithoutGpuFailsClearly) {
  if (gpu_available()) GTEST_SKIP() << "a GPU is present";
  try {
    OwnedTensor t({4}, DType::f32, Device::cuda);
    FAIL() << "allocation on cuda should fail without a GPU";
  } catch (const Error& e) {
    EXPECT_TRUE(e.kind() == ErrorKind::cuda || e.kind() == ErrorKind::invalid_argument) << e.what();
  }
}

// Without a GPU, pinned host memory is plain host memory and copy_async copies at once.
TEST(Storage, PinnedHostTensorsCopyAsynchronously) {
  OwnedTensor pinned = OwnedTensor::pinned_host({3, 4}, DType::f32);
  OwnedTensor plain({3, 4}, DType::f32, Device::cpu);
  EXPECT_EQ(pinned.view().describe(), "f32[3, 4] cpu");
  for (int i = 0; i < 12; ++i) plain.view().ptr<float>()[i] = float(i) * 0.5f;
  copy_async(pinned, plain, {});
  for (int i = 0; i < 12; ++i) EXPECT_EQ(pinned.view().ptr<float>()[i], float(i) * 0.5f);
  OwnedTensor wrong({12}, DType::i32, Device::cpu);
  expect_error([&] { copy_async(wrong, plain, {}); },
               "copy_async: f32[3, 4] cpu into i32[12] cpu (dtype and size must match)");
}

}  // namespace
}  // namespace sy::test
