// Reductions: argument checks, dispatch, and the CPU reference. sum_squares accumulates into
// its output so calls over many tensors chain into one global gradient norm.
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {

void sum_squares(const Tensor& x, const Tensor& out, StreamRef stream) {
  const char* op = "sum_squares";
  // An empty x may have no storage at all (an OwnedTensor of 0 elements allocates none).
  if (x.numel() > 0) check_contiguous(op, "x", x);
  check_float(op, "x", x);
  check_contiguous(op, "out", out);
  check_shape(op, "out", out, {1});
  check_dtype(op, "out", out, DType::f32);
  check_same_device(op, {&x, &out});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::sum_squares(x, out, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = x.ptr<T>();
    double sum = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) sum += to_double(xp[i]) * to_double(xp[i]);
    float* op_ = out.ptr<float>();
    op_[0] = float(double(op_[0]) + sum);
  });
}

}  // namespace sy
