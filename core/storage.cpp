// Persistent allocations, the per-step arena, and copies between devices.
#include "core/storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

#ifdef SY_WITH_CUDA
#include "core/cuda_check.h"
#endif

namespace sy {

namespace {
std::atomic<std::size_t> g_device_bytes{0};
}  // namespace

std::size_t device_bytes_allocated() { return g_device_bytes.load(); }

Storage::Storage(Device device, std::size_t bytes) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::cpu) {
    // 256-byte alignment, as cudaMalloc gives, so arena offsets align the same on both devices.
    std::size_t rounded = (bytes + 255) / 256 * 256;
    data_ = std::aligned_alloc(256, rounded);
    SY_CHECK(data_ != nullptr) << "host allocation of " << bytes << " bytes failed";
  } else {
#ifdef SY_WITH_CUDA
    SY_CUDA(cudaMalloc(&data_, bytes));
    g_device_bytes += bytes;
#else
    SY_FAIL() << "cannot allocate on cuda: this build has no CUDA backend";
#endif
  }
}

Storage::~Storage() { release(); }

void Storage::release() {
  if (!data_) return;
  if (device_ == Device::cpu) {
    std::free(data_);
  } else {
#ifdef SY_WITH_CUDA
    cudaFree(data_);
    g_device_bytes -= bytes_;
#endif
  }
  data_ = nullptr;
}

Storage::Storage(Storage&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)), device_(other.device_) {}

Storage& Storage::operator=(Storage&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

Tensor Storage::tensor(const Shape& shape, DType dtype) const {
  Tensor t(data_, shape, dtype, device_);
  SY_CHECK(t.bytes() <= bytes_) << "view " << t.describe() << " needs " << t.bytes() << " bytes; storage has "
                                << bytes_;
  return t;
}

OwnedTensor::OwnedTensor(const Shape& shape, DType dtype, Device device) {
  Tensor probe(nullptr, shape, dtype, device);
  storage_ = Storage(device, probe.bytes());
  view_ = Tensor(storage_.data(), shape, dtype, device);
}

Arena::Arena(Device device, std::size_t capacity_bytes) : storage_(device, capacity_bytes) {}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  Tensor probe(nullptr, shape, dtype, storage_.device());
  std::size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  SY_CHECK(start + probe.bytes() <= storage_.bytes())
      << "arena out of memory: " << probe.describe() << " needs " << probe.bytes() << " bytes, " << storage_.bytes() - used_
      << " of " << storage_.bytes() << " left (raise the arena size)";
  used_ = start + probe.bytes();
  if (used_ > peak_) peak_ = used_;
  return Tensor(static_cast<char*>(storage_.data()) + start, shape, dtype, storage_.device());
}

void Arena::release_to(std::size_t mark) {
  SY_CHECK(mark <= used_) << "arena mark " << mark << " is past the used size " << used_;
  used_ = mark;
}

void copy(const Tensor& dst, const Tensor& src, StreamRef stream) {
  check_contiguous("copy", "dst", dst);
  check_contiguous("copy", "src", src);
  SY_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel())
      << "copy: " << src.describe() << " into " << dst.describe() << " (dtype and size must match)";
  if (src.bytes() == 0) return;
  if (dst.device() == Device::cpu && src.device() == Device::cpu) {
    std::memcpy(dst.data(), src.data(), src.bytes());
    return;
  }
#ifdef SY_WITH_CUDA
  auto s = static_cast<cudaStream_t>(stream.handle);
  SY_CUDA(cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDefault, s));
  // A host destination must be complete when copy() returns, as on the CPU path.
  if (dst.device() == Device::cpu || src.device() == Device::cpu) SY_CUDA(cudaStreamSynchronize(s));
#else
  SY_FAIL() << "copy between devices needs the CUDA backend";
#endif
}

void fill_bytes(const Tensor& t, int byte, StreamRef stream) {
  check_contiguous("fill_bytes", "t", t);
  if (t.bytes() == 0) return;
  if (t.device() == Device::cpu) {
    std::memset(t.data(), byte, t.bytes());
    return;
  }
#ifdef SY_WITH_CUDA
  SY_CUDA(cudaMemsetAsync(t.data(), byte, t.bytes(), static_cast<cudaStream_t>(stream.handle)));
#endif
}

}  // namespace sy
