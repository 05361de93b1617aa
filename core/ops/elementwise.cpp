// Elementwise ops: residual add and dtype casts. Checks, dispatch and the CPU reference.
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {

void add(const Tensor& a, const Tensor& b, const Tensor& out, StreamRef stream) {
  const char* op = "add";
  check_contiguous(op, "a", a);
  check_contiguous(op, "b", b);
  check_contiguous(op, "out", out);
  check_float(op, "a", a);
  check_shape(op, "b", b, a.shape());
  check_shape(op, "out", out, a.shape());
  check_dtype(op, "b", b, a.dtype());
  check_dtype(op, "out", out, a.dtype());
  check_same_device(op, {&a, &b, &out});
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::add(a, b, out, stream));
    return;
  }
  cpu::dispatch_float(a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* ap = a.ptr<T>();
    const T* bp = b.ptr<T>();
    T* op_ = out.ptr<T>();
    for (std::int64_t i = 0; i < a.numel(); ++i) op_[i] = from_double<T>(to_double(ap[i]) + to_double(bp[i]));
  });
}

void cast(const Tensor& src, const Tensor& dst, StreamRef stream) {
  const char* op = "cast";
  check_contiguous(op, "src", src);
  check_contiguous(op, "dst", dst);
  check_float(op, "src", src);
  check_float(op, "dst", dst);
  SY_CHECK(src.numel() == dst.numel()) << "cast: " << src.describe() << " into " << dst.describe()
                                       << " (element counts differ)";
  check_same_device(op, {&src, &dst});
  if (src.is_cuda()) {
    SY_ON_CUDA(cuda::cast(src, dst, stream));
    return;
  }
  cpu::dispatch_float(src, [&](auto* src_type) {
    cpu::dispatch_float(dst, [&](auto* dst_type) {
      using S = std::remove_pointer_t<decltype(src_type)>;
      using D = std::remove_pointer_t<decltype(dst_type)>;
      const S* sp = src.ptr<S>();
      D* dp = dst.ptr<D>();
      for (std::int64_t i = 0; i < src.numel(); ++i) dp[i] = from_double<D>(to_double(sp[i]));
    });
  });
}

}  // namespace sy
