// scale_in_place: argument checks, dispatch, and the CPU version.
#include "parallel/gradient_scale.h"

#include "core/ops/cuda_ops.h"

namespace sy {

void scale_in_place(const Tensor& x, float factor, StreamRef stream) {
  const char* op = "scale_in_place";
  if (x.numel() == 0) return;
  check_contiguous(op, "x", x);
  check_dtype(op, "x", x, DType::f32);
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::scale_in_place(x, factor, stream));
    return;
  }
  float* p = x.ptr<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i) p[i] *= factor;
}

}  // namespace sy
