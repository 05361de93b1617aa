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

// sign = +1 rotates by +angle (forward), -1 by -angle (backward). in and out are [B, H, T, D]
// views with a contiguous last axis; row (b, h, t) of each starts at b s0 + h s1 + t s2.
template <class T>
void rope_rotate_cpu(const Tensor& in, const Tensor& out, float theta, double sign) {
  const std::int64_t heads = in.size(1), seq = in.size(2), head_dim = in.size(3), half = head_dim / 2;
  for (std::int64_t b = 0; b < in.size(0); ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = 0; t < seq; ++t) {
        const T* ir = in.ptr<T>() + b * in.stride(0) + h * in.stride(1) + t * in.stride(2);
        T* orow = out.ptr<T>() + b * out.stride(0) + h * out.stride(1) + t * out.stride(2);
        for (std::int64_t i = 0; i < half; ++i) {
          const double frequency = std::pow(double(theta), -2.0 * double(i) / double(head_dim));
          const double angle = sign * double(t) * frequency;
          const double c = std::cos(angle), s = std::sin(angle);
          const double x1 = to_double(ir[i]), x2 = to_double(ir[i + half]);
          orow[i] = from_double<T>(x1 * c - x2 * s);
          orow[i + half] = from_double<T>(x1 * s + x2 * c);
        }
      }
}

// x may be a view of heads inside a token-major matrix (e.g. the q and k columns of the qkv
// projection): any strides on B, H, T, a contiguous D. out must have the same strides, so
// that in-place rotation is exactly "each pair read, then written".
void check_rope_args(const char* op, const char* in_name, const Tensor& in, const char* out_name, const Tensor& out,
                     float theta) {
  check_float(op, in_name, in);
  SY_CHECK(in.dim() == 4 && in.size(3) % 2 == 0)
      << op << ": " << in_name << " must be [B, H, T, D] with D even, got " << in.describe();
  SY_CHECK(in.stride(3) == 1) << op << ": " << in_name << " must have a contiguous last axis, got " << in.describe()
                              << " with stride " << in.stride(3);
  SY_CHECK(theta > 0.0f) << op << ": theta must be positive, got " << theta;
  check_shape(op, out_name, out, in.shape());
  check_dtype(op, out_name, out, in.dtype());
  for (int axis = 0; axis < 4; ++axis)
    SY_CHECK(out.stride(axis) == in.stride(axis))
        << op << ": " << out_name << " must have the strides of " << in_name << ", they differ on axis " << axis
        << " (" << out.stride(axis) << " vs " << in.stride(axis) << ")";
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
