// Owning memory. Storage is one persistent allocation (parameters, optimizer state); Arena
// hands out per-step activations from one block and is reset each step, so a step never calls
// the allocator. Both return Tensor views.
#pragma once

#include <cstddef>
#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace sy {

class Storage {
 public:
  Storage() = default;
  Storage(Device device, std::size_t bytes);
  // Host memory the GPU can copy from and to without staging (page-locked), so copy_async
  // overlaps it with running kernels; plain host memory where there is no GPU.
  static Storage pinned_host(std::size_t bytes);
  ~Storage();
  Storage(Storage&& other) noexcept;
  Storage& operator=(Storage&& other) noexcept;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // A contiguous view from the start of the allocation.
  Tensor tensor(const Shape& shape, DType dtype) const;

 private:
  void release();
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Device device_ = Device::cpu;
  bool pinned_ = false;
};

// Bytes this process holds in device Storage now (every cudaMalloc of the framework's tensors,
// the arena's whole block included; not the CUDA context or library workspaces).
std::size_t device_bytes_allocated();
// Free bytes on the current CUDA device (0 without one).
std::size_t device_bytes_free();

// Owns one tensor: the usual way to hold a parameter or a test input.
class OwnedTensor {
 public:
  OwnedTensor() = default;
  OwnedTensor(const Shape& shape, DType dtype, Device device);
  static OwnedTensor pinned_host(const Shape& shape, DType dtype);  // see Storage::pinned_host
  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }

 private:
  Storage storage_;
  Tensor view_;
};

// A bump allocator for one step's tensors. A fixed arena fails when full; a growable one adds a
// block (at least a quarter of what it holds) and, at the next reset(), replaces its blocks by
// one block of the high-water size: the first step sizes the arena, later steps never call the
// device allocator. Offsets (mark, release_to, used, peak) count across blocks as if they
// were one.
class Arena {
 public:
  static constexpr std::size_t kAlignment = 256;  // cuBLAS and 16-byte vector loads want aligned bases
  enum class Growth { fixed, growable };

  Arena() = default;
  Arena(Device device, std::size_t capacity_bytes, Growth growth = Growth::fixed);

  Tensor alloc(const Shape& shape, DType dtype);
  // Frees every allocation; tensors handed out before are invalid from here on.
  void reset();
  std::size_t mark() const { return used_; }
  void release_to(std::size_t mark);
  std::size_t used() const { return used_; }
  std::size_t peak() const { return peak_; }
  std::size_t capacity() const;  // bytes held in all blocks
  std::size_t blocks() const { return blocks_.size(); }

 private:
  struct Block {
    Storage storage;
    std::size_t begin = 0;  // offset of its first byte
    std::size_t end() const { return begin + storage.bytes(); }
  };
  Device device_ = Device::cpu;
  Growth growth_ = Growth::fixed;
  std::vector<Block> blocks_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
};

// Byte copy between any two devices; shapes and dtypes must match, both contiguous.
void copy(const Tensor& dst, const Tensor& src, StreamRef stream = {});
// The same, ordered on `stream` without waiting for it, also when one side is host memory: that
// memory must be pinned (Storage::pinned_host) and stay untouched until the stream passes the
// copy (an event recorded after it).
void copy_async(const Tensor& dst, const Tensor& src, StreamRef stream);
// Fills every byte with `byte` (tests poison outputs with 0xff: NaN in every float type).
void fill_bytes(const Tensor& t, int byte, StreamRef stream = {});

}  // namespace sy
