// Persistent allocations, the per-step arena, and copies between devices.
#include "core/storage.h"

#include <algorithm>
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

std::size_t device_bytes_free() {
#ifdef SY_WITH_CUDA
  std::size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) return free;
#endif
  return 0;
}

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

Storage Storage::pinned_host(std::size_t bytes) {
#ifdef SY_WITH_CUDA
  int devices = 0;
  void* data = nullptr;
  if (bytes > 0 && cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    SY_CUDA(cudaMallocHost(&data, bytes));
    Storage s;
    s.data_ = data;
    s.bytes_ = bytes;
    s.pinned_ = true;
    return s;
  }
  cudaGetLastError();  // no GPU: clear the error the count left, and use plain host memory
#endif
  return Storage(Device::cpu, bytes);
}

Storage::~Storage() { release(); }

void Storage::release() {
  if (!data_) return;
  if (pinned_) {
#ifdef SY_WITH_CUDA
    cudaFreeHost(data_);
#endif
  } else if (device_ == Device::cpu) {
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
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_),
      pinned_(std::exchange(other.pinned_, false)) {}

Storage& Storage::operator=(Storage&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
    pinned_ = std::exchange(other.pinned_, false);
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

OwnedTensor OwnedTensor::pinned_host(const Shape& shape, DType dtype) {
  OwnedTensor t;
  t.storage_ = Storage::pinned_host(Tensor(nullptr, shape, dtype, Device::cpu).bytes());
  t.view_ = Tensor(t.storage_.data(), shape, dtype, Device::cpu);
  return t;
}

Arena::Arena(Device device, std::size_t capacity_bytes, Growth growth) : device_(device), growth_(growth) {
  blocks_.push_back({Storage(device, capacity_bytes), 0});
}

std::size_t Arena::capacity() const { return blocks_.empty() ? 0 : blocks_.back().end(); }

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  const std::size_t bytes = Tensor(nullptr, shape, dtype, device_).bytes();
  auto align = [](std::size_t offset) { return (offset + kAlignment - 1) / kAlignment * kAlignment; };
  std::size_t start = align(used_);
  // The block holding `start`; a request that does not fit in its rest starts the next block.
  std::size_t i = 0;
  while (i < blocks_.size() && blocks_[i].end() <= start) ++i;
  while (i < blocks_.size() && start + bytes > blocks_[i].end()) {
    ++i;
    if (i < blocks_.size()) start = blocks_[i].begin;
  }
  if (i == blocks_.size()) {
    SY_CHECK(growth_ == Growth::growable)
        << "arena out of memory: " << Tensor(nullptr, shape, dtype, device_).describe() << " needs " << bytes
        << " bytes, " << capacity() - std::min(capacity(), used_) << " of " << capacity()
        << " left (raise the arena size)";
    const std::size_t begin = capacity();
    blocks_.push_back({Storage(device_, std::max(bytes, begin / 4 + kAlignment)), begin});
    start = begin;
  }
  used_ = start + bytes;
  peak_ = std::max(peak_, used_);
  Block& block = blocks_[i];
  return Tensor(static_cast<char*>(block.storage.data()) + (start - block.begin), shape, dtype, device_);
}

void Arena::reset() {
  used_ = 0;
  if (blocks_.size() > 1) {
    // Freeing device memory waits for the device, so no kernel still uses the old blocks.
    blocks_.clear();
    blocks_.push_back({Storage(device_, peak_), 0});
  }
}

void Arena::release_to(std::size_t mark) {
  SY_CHECK(mark <= used_) << "arena mark " << mark << " is past the used size " << used_;
  used_ = mark;
}

namespace {
// Enqueues the copy; true when it went through the device (host memory stays in use after).
bool enqueue_copy(const char* op, const Tensor& dst, const Tensor& src, StreamRef stream) {
  check_contiguous(op, "dst", dst);
  check_contiguous(op, "src", src);
  SY_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel())
      << op << ": " << src.describe() << " into " << dst.describe() << " (dtype and size must match)";
  if (src.bytes() == 0) return false;
  if (dst.device() == Device::cpu && src.device() == Device::cpu) {
    std::memcpy(dst.data(), src.data(), src.bytes());
    return false;
  }
#ifdef SY_WITH_CUDA
  SY_CUDA(cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDefault,
                          static_cast<cudaStream_t>(stream.handle)));
  return true;
#else
  (void)stream;
  SY_FAIL() << op << " between devices needs the CUDA backend";
  return false;
#endif
}
}  // namespace

void copy(const Tensor& dst, const Tensor& src, StreamRef stream) {
  const bool on_device = enqueue_copy("copy", dst, src, stream);
#ifdef SY_WITH_CUDA
  // A host destination must be complete when copy() returns, as on the CPU path.
  if (on_device && (dst.device() == Device::cpu || src.device() == Device::cpu))
    SY_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(stream.handle)));
#else
  (void)on_device;
#endif
}

void copy_async(const Tensor& dst, const Tensor& src, StreamRef stream) { enqueue_copy("copy_async", dst, src, stream); }

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
