// Rotary position embedding: argument checks, dispatch, and the CPU reference. Forward rotates
// each pair (i, i + D/2) at position t by angle t * theta^(-2i/D); backward is the transpose,
// the rotation by -angle. Each pair is read fully before it is written, so out may alias in.
#include <cmath>
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// sign = +1 rotates by +angle (forward), -1 by -angle (backward).
template <class T>
void rope_rotate_cpu(const Tensor& in, const Tensor& out, float theta, double sign) {
  const std::int64_t seq = in.size(2), head_dim = in.size(3), half = head_dim / 2;
  const std::int64_t rows = in.numel() / head_dim;  // B * H * T
  const T* ip = in.ptr<T>();
  T* op = out.ptr<T>();
  for (std::int64_t row = 0; row < rows; ++row) {
    const double t = double(row % seq);
    const T* ir = ip + row * head_dim;
    T* orow = op + row * head_dim;
    for (std::int64_t i = 0; i < half; ++i) {
      const double frequency = std::pow(double(theta), -2.0 * double(i) / double(head_dim));
      const double angle = sign * t * frequency;
      const double c = std::cos(angle), s = std::sin(angle);
      const double x1 = to_double(ir[i]), x2 = to_double(ir[i + half]);
      orow[i] = from_double<T>(x1 * c - x2 * s);
      orow[i + half] = from_double<T>(x1 * s + x2 * c);
    }
  }
}

void check_rope_args(const char* op, const char* in_name, const Tensor& in, const char* out_name, const Tensor& out,
                     float theta) {
  check_contiguous(op, in_name, in);
  check_float(op, in_name, in);
  SY_CHECK(in.dim() == 4 && in.size(3) % 2 == 0)
      << op << ": " << in_name << " must be [B, H, T, D] with D even, got " << in.describe();
  SY_CHECK(theta > 0.0f) << op << ": theta must be positive, got " << theta;
  check_contiguous(op, out_name, out);
  check_shape(op, out_name, out, in.shape());
  check_dtype(op, out_name, out, in.dtype());
  check_same_device(op, {&in, &out});
}

void rope_rotate(const Tensor& in, const Tensor& out, float theta, double sign) {
  cpu::dispatch_float(in, [&](auto* type) { rope_rotate_cpu<std::remove_pointer_t<decltype(type)>>(in, out, theta, sign); });
}

}  // namespace

void rope_forward(const Tensor& x, const Tensor& y, float theta, StreamRef stream) {
  check_rope_args("rope_forward", "x", x, "y", y, theta);
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::rope_forward(x, y, theta, stream));
    return;
  }
  rope_rotate(x, y, theta, 1.0);
}

void rope_backward(const Tensor& dy, const Tensor& dx, float theta, StreamRef stream) {
  check_rope_args("rope_backward", "dy", dy, "dx", dx, theta);
  if (dy.is_cuda()) {
    SY_ON_CUDA(cuda::rope_backward(dy, dx, theta, stream));
    return;
  }
  rope_rotate(dy, dx, theta, -1.0);
}

}  // namespace sy
