// scale: out = factor * x, in place when out is x. Gradient averaging (1/dp) and loss scaling use
// it; checks, dispatch and the CPU reference.
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {

void scale(const Tensor& x, float factor, const Tensor& out, StreamRef stream) {
  const char* op = "scale";
  check_contiguous(op, "x", x);
  check_contiguous(op, "out", out);
  check_float(op, "x", x);
  check_shape(op, "out", out, x.shape());
  check_dtype(op, "out", out, x.dtype());
  check_same_device(op, {&x, &out});
  if (x.numel() == 0) return;
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::scale(x, factor, out, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* xp = x.ptr<T>();
    T* outp = out.ptr<T>();
    for (std::int64_t i = 0; i < x.numel(); ++i) outp[i] = from_double<T>(double(factor) * to_double(xp[i]));
  });
}

}  // namespace sy
