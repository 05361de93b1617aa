// Reductions: argument checks, dispatch, and the CPU reference. sum_squares accumulates into
// its output so calls over many tensors chain into one global gradient norm.
#include <span>
#include <string>
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {

void sum_squares(const Tensor& x, const Tensor& out, StreamRef stream) { sum_squares(std::span(&x, 1), out, stream); }

void sum_squares(std::span<const Tensor> parts, const Tensor& out, StreamRef stream) {
  const char* op = "sum_squares";
  check_contiguous(op, "out", out);
  check_shape(op, "out", out, {1});
  check_dtype(op, "out", out, DType::f32);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const Tensor& x = parts[i];
    const std::string name = parts.size() == 1 ? "x" : "part " + std::to_string(i);
    // An empty part may have no storage at all (an OwnedTensor of 0 elements allocates none).
    if (x.numel() > 0) check_contiguous(op, name.c_str(), x);
    check_float(op, name.c_str(), x);
    SY_CHECK(x.dtype() == parts[0].dtype())
        << op << ": " << name << " is " << x.describe() << ", but part 0 is " << parts[0].describe()
        << " (all parts must have one dtype)";
    check_same_device(op, {&x, &out});
  }
  if (parts.empty()) return;
  if (out.is_cuda()) {
    SY_ON_CUDA(cuda::sum_squares(parts.data(), parts.size(), out, stream));
    return;
  }
  for (const Tensor& x : parts) {
    cpu::dispatch_float(x, [&](auto* type) {
      using T = std::remove_pointer_t<decltype(type)>;
      const T* xp = x.ptr<T>();
      double sum = 0;
      for (std::int64_t i = 0; i < x.numel(); ++i) sum += to_double(xp[i]) * to_double(xp[i]);
      float* op_ = out.ptr<float>();
      op_[0] = float(double(op_[0]) + sum);
    });
  }
}

}  // namespace sy
