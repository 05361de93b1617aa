// Tensor views: shapes, strides and the argument checks every op uses.
#include "core/tensor.h"

#include <sstream>

namespace sy {

Tensor::Tensor(void* data, const Shape& shape, DType dtype, Device device)
    : data_(data), ndim_(int(shape.size())), dtype_(dtype), device_(device) {
  SY_CHECK(ndim_ <= kMaxDims) << "tensor of " << ndim_ << " dimensions; at most " << kMaxDims << " supported";
  std::int64_t stride = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    SY_CHECK(shape[i] >= 0) << "negative size in shape " << shape_string(shape);
    shape_[i] = shape[i];
    strides_[i] = stride;
    stride *= shape[i];
  }
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= shape_[i];
  return n;
}

bool Tensor::is_contiguous() const {
  std::int64_t stride = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != stride) return false;
    stride *= shape_[i];
  }
  return true;
}

int Tensor::normalize_axis(int axis) const {
  int a = axis < 0 ? axis + ndim_ : axis;
  SY_CHECK(a >= 0 && a < ndim_) << "axis " << axis << " out of range for " << describe();
  return a;
}

Tensor Tensor::reshape(const Shape& shape) const {
  SY_CHECK(is_contiguous()) << "reshape needs a contiguous tensor, got " << describe();
  Tensor out(data_, shape, dtype_, device_);
  SY_CHECK(out.numel() == numel()) << "cannot reshape " << describe() << " to " << shape_string(shape);
  return out;
}

Tensor Tensor::slice_rows(std::int64_t start, std::int64_t length) const {
  SY_CHECK(ndim_ >= 1 && start >= 0 && length >= 0 && start + length <= shape_[0])
      << "rows [" << start << ", " << start + length << ") out of range for " << describe();
  Tensor out = *this;
  out.shape_[0] = length;
  out.data_ = static_cast<char*>(data_) + start * strides_[0] * std::int64_t(dtype_size(dtype_));
  return out;
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, std::int64_t offset_elements) const {
  SY_CHECK(shape.size() == strides.size() && int(shape.size()) <= kMaxDims)
      << "as_strided: shape " << shape_string(shape) << " and strides " << shape_string(strides) << " differ in rank";
  Tensor out = *this;
  out.ndim_ = int(shape.size());
  for (int i = 0; i < out.ndim_; ++i) {
    out.shape_[i] = shape[i];
    out.strides_[i] = strides[i];
  }
  out.data_ = static_cast<char*>(data_) + offset_elements * std::int64_t(dtype_size(dtype_));
  return out;
}

std::string shape_string(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string Tensor::describe() const {
  std::ostringstream s;
  s << dtype_name(dtype_) << shape_string(shape()) << " " << device_name(device_);
  return s.str();
}

void check_contiguous(const char* op, const char* arg, const Tensor& t) {
  // An empty tensor needs no memory: an unset pointer is fine there.
  SY_CHECK(t.defined() || (t.dim() > 0 && t.numel() == 0)) << op << ": " << arg << " is not set";
  SY_CHECK(t.is_contiguous()) << op << ": " << arg << " must be contiguous, got " << t.describe();
}

void check_dtype(const char* op, const char* arg, const Tensor& t, DType expected) {
  SY_CHECK(t.dtype() == expected) << op << ": " << arg << " must be " << dtype_name(expected) << ", got "
                                  << t.describe();
}

void check_shape(const char* op, const char* arg, const Tensor& t, const Shape& expected) {
  SY_CHECK(t.shape() == expected) << op << ": " << arg << " must have shape " << shape_string(expected) << ", got "
                                  << t.describe();
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (!first) first = t;
    SY_CHECK(t->device() == first->device()) << op << ": tensors on different devices (" << first->describe()
                                             << " and " << t->describe() << ")";
  }
}

void check_float(const char* op, const char* arg, const Tensor& t) {
  SY_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64 || t.dtype() == DType::bf16)
      << op << ": " << arg << " must be f32, f64 or bf16, got " << t.describe();
}

}  // namespace sy
