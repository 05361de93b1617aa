// Tensor: a non-owning view (pointer, shape, strides, dtype, device). Storage comes from a
// Storage or an Arena (core/storage.h); a Tensor never allocates or frees.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace sy {

using Shape = std::vector<std::int64_t>;

class Tensor {
 public:
  static constexpr int kMaxDims = 5;

  Tensor() = default;
  // Contiguous (row-major) view of `data`.
  Tensor(void* data, const Shape& shape, DType dtype, Device device);

  void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int dim() const { return ndim_; }
  bool defined() const { return data_ != nullptr; }
  // Negative axes count from the end, as in Python.
  std::int64_t size(int axis) const { return shape_[normalize_axis(axis)]; }
  std::int64_t stride(int axis) const { return strides_[normalize_axis(axis)]; }
  Shape shape() const { return Shape(shape_.begin(), shape_.begin() + ndim_); }
  std::int64_t numel() const;
  std::size_t bytes() const { return std::size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  bool is_cuda() const { return device_ == Device::cuda; }

  template <class T>
  T* ptr() const {
    SY_CHECK(dtype_of<T>::value == dtype_) << "tensor holds " << dtype_name(dtype_) << ", accessed as "
                                           << dtype_name(dtype_of<T>::value);
    return static_cast<T*>(data_);
  }

  // Same memory, new contiguous shape with the same number of elements.
  Tensor reshape(const Shape& shape) const;
  // Rows [start, start + length) along axis 0 of a contiguous tensor.
  Tensor slice_rows(std::int64_t start, std::int64_t length) const;
  // Item `index` along axis 0, with that axis removed.
  Tensor select(std::int64_t index) const { return slice_rows(index, 1).reshape(Shape(shape_.begin() + 1, shape_.begin() + ndim_)); }
  // General strided view over the same memory (used for column slices and broadcast batches).
  Tensor as_strided(const Shape& shape, const Shape& strides, std::int64_t offset_elements = 0) const;

  std::string describe() const;  // "bf16[4, 7, 32] cuda"

 private:
  int normalize_axis(int axis) const;

  void* data_ = nullptr;
  int ndim_ = 0;
  std::array<std::int64_t, kMaxDims> shape_{};
  std::array<std::int64_t, kMaxDims> strides_{};
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

std::string shape_string(const Shape& shape);

// Argument checks shared by the op dispatchers; each names the op and the argument.
void check_contiguous(const char* op, const char* arg, const Tensor& t);
void check_dtype(const char* op, const char* arg, const Tensor& t, DType expected);
void check_shape(const char* op, const char* arg, const Tensor& t, const Shape& expected);
void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors);
void check_float(const char* op, const char* arg, const Tensor& t);  // f32, f64 or bf16

}  // namespace sy
