// Activations of the feed-forward block (GELU, ReLU, SwiGLU): argument checks, dispatch, and
// the CPU reference, each forward followed by its backward. The pointwise math lives in
// scalar functions in double so the reference reads like the formulas.
#include <cmath>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// GELU, tanh approximation: 0.5 x (1 + tanh(k0 (x + k1 x^3))).
constexpr double kGeluK0 = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluK1 = 0.044715;

double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(kGeluK0 * (x + kGeluK1 * x * x * x))); }
double gelu_grad(double x) {
  const double th = std::tanh(kGeluK0 * (x + kGeluK1 * x * x * x));
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * kGeluK0 * (1.0 + 3.0 * kGeluK1 * x * x);
}
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// y[i] = f(x[i]) over every element.
template <class T, class F>
void map_cpu(const Tensor& x, const Tensor& y, F f) {
  const T* xp = x.ptr<T>();
  T* yp = y.ptr<T>();
  for (std::int64_t i = 0; i < x.numel(); ++i) yp[i] = from_double<T>(f(to_double(xp[i])));
}

// dx[i] = dy[i] * f'(x[i]).
template <class T, class F>
void map_grad_cpu(const Tensor& x, const Tensor& dy, const Tensor& dx, F grad) {
  const T* xp = x.ptr<T>();
  const T* dyp = dy.ptr<T>();
  T* dxp = dx.ptr<T>();
  for (std::int64_t i = 0; i < x.numel(); ++i) dxp[i] = from_double<T>(to_double(dyp[i]) * grad(to_double(xp[i])));
}

template <class T>
void swiglu_forward_cpu(const Tensor& x, const Tensor& y) {
  const std::int64_t rows = y.size(0), hidden = y.size(1);
  const T* xp = x.ptr<T>();
  T* yp = y.ptr<T>();
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* gate = xp + n * 2 * hidden;
    const T* up = gate + hidden;
    for (std::int64_t f = 0; f < hidden; ++f) {
      const double g = to_double(gate[f]);
      yp[n * hidden + f] = from_double<T>(g * sigmoid(g) * to_double(up[f]));
    }
  }
}

// y = g * s(g) * u with s the sigmoid: dup = dy * g * s(g); dgate = dy * u * s(g) (1 + g (1 - s(g))).
template <class T>
void swiglu_backward_cpu(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  const std::int64_t rows = dy.size(0), hidden = dy.size(1);
  const T* xp = x.ptr<T>();
  const T* dyp = dy.ptr<T>();
  T* dxp = dx.ptr<T>();
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* gate = xp + n * 2 * hidden;
    const T* up = gate + hidden;
    T* dgate = dxp + n * 2 * hidden;
    T* dup = dgate + hidden;
    for (std::int64_t f = 0; f < hidden; ++f) {
      const double g = to_double(gate[f]), u = to_double(up[f]), d = to_double(dyp[n * hidden + f]);
      const double s = sigmoid(g);
      dgate[f] = from_double<T>(d * u * s * (1.0 + g * (1.0 - s)));
      dup[f] = from_double<T>(d * g * s);
    }
  }
}

// x, then the tensors that must match it: contiguous, x's float dtype and shape.
void check_pointwise_args(const char* op, const Tensor& x,
                          std::initializer_list<std::pair<const char*, const Tensor*>> others) {
  check_contiguous(op, "x", x);
  check_float(op, "x", x);
  for (const auto& [name, t] : others) {
    check_contiguous(op, name, *t);
    check_shape(op, name, *t, x.shape());
    check_dtype(op, name, *t, x.dtype());
  }
}

void check_swiglu_input(const char* op, const Tensor& x) {
  check_contiguous(op, "x", x);
  check_float(op, "x", x);
  SY_CHECK(x.dim() == 2 && x.size(1) % 2 == 0) << op << ": x must be [N, 2F] ([gate | up]), got " << x.describe();
}

}  // namespace

void gelu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  const char* op = "gelu_forward";
  check_pointwise_args(op, x, {{"y", &y}});
  check_same_device(op, {&x, &y});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::gelu_forward(x, y, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) { map_cpu<std::remove_pointer_t<decltype(type)>>(x, y, gelu); });
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  const char* op = "gelu_backward";
  check_pointwise_args(op, x, {{"dy", &dy}, {"dx", &dx}});
  check_same_device(op, {&x, &dy, &dx});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::gelu_backward(x, dy, dx, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) { map_grad_cpu<std::remove_pointer_t<decltype(type)>>(x, dy, dx, gelu_grad); });
}

void gelu_backward_recompute(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& y,
                             StreamRef stream) {
  const char* op = "gelu_backward_recompute";
  check_pointwise_args(op, x, {{"dy", &dy}, {"dx", &dx}, {"y", &y}});
  check_same_device(op, {&x, &dy, &dx, &y});
  SY_CHECK(y.data() != x.data() && y.data() != dy.data()) << op << ": y must not alias x or dy";
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::gelu_backward_recompute(x, dy, dx, y, stream));
    return;
  }
  // The reference is the two ops it fuses; y first, as dx may overwrite dy.
  gelu_forward(x, y, stream);
  gelu_backward(x, dy, dx, stream);
}

void relu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  const char* op = "relu_forward";
  check_pointwise_args(op, x, {{"y", &y}});
  check_same_device(op, {&x, &y});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::relu_forward(x, y, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) {
    map_cpu<std::remove_pointer_t<decltype(type)>>(x, y, [](double v) { return v > 0.0 ? v : 0.0; });
  });
}

// The derivative at exactly 0 is taken as 0 (the subgradient PyTorch and most frameworks use).
void relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  const char* op = "relu_backward";
  check_pointwise_args(op, x, {{"dy", &dy}, {"dx", &dx}});
  check_same_device(op, {&x, &dy, &dx});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::relu_backward(x, dy, dx, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) {
    map_grad_cpu<std::remove_pointer_t<decltype(type)>>(x, dy, dx, [](double v) { return v > 0.0 ? 1.0 : 0.0; });
  });
}

void swiglu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  const char* op = "swiglu_forward";
  check_swiglu_input(op, x);
  check_contiguous(op, "y", y);
  check_shape(op, "y", y, {x.size(0), x.size(1) / 2});
  check_dtype(op, "y", y, x.dtype());
  check_same_device(op, {&x, &y});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::swiglu_forward(x, y, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) { swiglu_forward_cpu<std::remove_pointer_t<decltype(type)>>(x, y); });
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  const char* op = "swiglu_backward";
  check_swiglu_input(op, x);
  check_contiguous(op, "dy", dy);
  check_shape(op, "dy", dy, {x.size(0), x.size(1) / 2});
  check_dtype(op, "dy", dy, x.dtype());
  check_contiguous(op, "dx", dx);
  check_shape(op, "dx", dx, x.shape());
  check_dtype(op, "dx", dx, x.dtype());
  check_same_device(op, {&x, &dy, &dx});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::swiglu_backward(x, dy, dx, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) { swiglu_backward_cpu<std::remove_pointer_t<decltype(type)>>(x, dy, dx); });
}

}  // namespace sy
