// RMSNorm: argument checks, dispatch, and the CPU reference (forward then backward).
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

template <class T>
void rmsnorm_forward_cpu(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps) {
  const std::int64_t rows = x.size(0), channels = x.size(1);
  const T* xp = x.ptr<T>();
  const T* wp = weight.ptr<T>();
  T* yp = y.ptr<T>();
  float* rp = rstd.ptr<float>();
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* xr = xp + n * channels;
    double sum_sq = 0;
    for (std::int64_t c = 0; c < channels; ++c) sum_sq += to_double(xr[c]) * to_double(xr[c]);
    const double r = 1.0 / std::sqrt(sum_sq / double(channels) + double(eps));
    rp[n] = float(r);
    for (std::int64_t c = 0; c < channels; ++c) yp[n * channels + c] = from_double<T>(to_double(xr[c]) * r * to_double(wp[c]));
  }
}

// With xhat = x * rstd: dx = rstd * (dy*w - xhat * mean(dy*w*xhat)); dweight (+)= sum_n dy*xhat.
// Uses the saved f32 rstd, as the CUDA kernel does (relative error ~1e-7, far below the
// tolerances of the fp64 gradient check).
// With `accumulate`, dx += the input gradient (the residual stream's gradient).
template <class T>
void rmsnorm_backward_cpu(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                          const Tensor& dx, const Tensor& dweight, bool accumulate, GradMode mode) {
  const std::int64_t rows = x.size(0), channels = x.size(1);
  const T* xp = x.ptr<T>();
  const T* wp = weight.ptr<T>();
  const T* dyp = dy.ptr<T>();
  T* dxp = dx.ptr<T>();
  const float* rp = rstd.ptr<float>();
  float* dwp = dweight.ptr<float>();
  std::vector<double> dw(std::size_t(channels), 0.0);
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* xr = xp + n * channels;
    const T* dyr = dyp + n * channels;
    const double r = rp[n];
    double dot = 0;
    for (std::int64_t c = 0; c < channels; ++c) dot += to_double(dyr[c]) * to_double(wp[c]) * to_double(xr[c]) * r;
    dot /= double(channels);
    for (std::int64_t c = 0; c < channels; ++c) {
      const double xhat = to_double(xr[c]) * r;
      const double g = r * (to_double(dyr[c]) * to_double(wp[c]) - xhat * dot);
      dxp[n * channels + c] = from_double<T>(accumulate ? to_double(dxp[n * channels + c]) + g : g);
      dw[std::size_t(c)] += to_double(dyr[c]) * xhat;
    }
  }
  for (std::int64_t c = 0; c < channels; ++c)
    dwp[c] = mode == GradMode::accumulate ? float(dwp[c] + dw[std::size_t(c)]) : float(dw[std::size_t(c)]);
}

void check_rmsnorm_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  check_contiguous(op, "x", x);
  check_float(op, "x", x);
  SY_CHECK(x.dim() == 2) << op << ": x must be [N, C], got " << x.describe();
  check_shape(op, "weight", weight, {x.size(1)});
  check_dtype(op, "weight", weight, x.dtype());
  check_shape(op, "rstd", rstd, {x.size(0)});
  check_dtype(op, "rstd", rstd, DType::f32);
}

// The argument checks of both backward forms; `dx_name` is what the gradient output is called.
void check_rmsnorm_backward_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                 const Tensor& dy, const char* dx_name, const Tensor& dx, const Tensor& dweight) {
  check_rmsnorm_args(op, x, weight, rstd);
  check_shape(op, "dy", dy, x.shape());
  check_dtype(op, "dy", dy, x.dtype());
  check_shape(op, dx_name, dx, x.shape());
  check_dtype(op, dx_name, dx, x.dtype());
  check_shape(op, "dweight", dweight, {x.size(1)});
  check_dtype(op, "dweight", dweight, DType::f32);
  check_same_device(op, {&x, &weight, &rstd, &dy, &dx, &dweight});
}

void rmsnorm_backward_any(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                          const Tensor& dx, const Tensor& dweight, bool accumulate, GradMode mode) {
  cpu::dispatch_float(x, [&](auto* type) {
    rmsnorm_backward_cpu<std::remove_pointer_t<decltype(type)>>(x, weight, rstd, dy, dx, dweight, accumulate, mode);
  });
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps,
                     StreamRef stream) {
  const char* op = "rmsnorm_forward";
  check_rmsnorm_args(op, x, weight, rstd);
  check_shape(op, "y", y, x.shape());
  check_dtype(op, "y", y, x.dtype());
  check_same_device(op, {&x, &weight, &y, &rstd});
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::rmsnorm_forward(x, weight, y, rstd, eps, stream));
    return;
  }
  cpu::dispatch_float(x, [&](auto* type) { rmsnorm_forward_cpu<std::remove_pointer_t<decltype(type)>>(x, weight, y, rstd, eps); });
}

void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& sum, const Tensor& weight, const Tensor& y,
                         const Tensor& rstd, float eps, StreamRef stream) {
  const char* op = "add_rmsnorm_forward";
  check_rmsnorm_args(op, a, weight, rstd);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"b", &b}, {"sum", &sum}, {"y", &y}}) {
    check_contiguous(op, name, *t);
    check_shape(op, name, *t, a.shape());
    check_dtype(op, name, *t, a.dtype());
  }
  check_same_device(op, {&a, &b, &sum, &weight, &y, &rstd});
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::add_rmsnorm_forward(a, b, sum, weight, y, rstd, eps, stream));
    return;
  }
  // The reference is the composition it replaces.
  add(a, b, sum, stream);
  rmsnorm_forward(sum, weight, y, rstd, eps, stream);
}

void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                      const Tensor& dweight, GradMode mode, StreamRef stream) {
  const char* op = "rmsnorm_backward";
  check_rmsnorm_backward_args(op, x, weight, rstd, dy, "dx", dx, dweight);
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::rmsnorm_backward(x, weight, rstd, dy, dx, dweight, mode, stream));
    return;
  }
  rmsnorm_backward_any(x, weight, rstd, dy, dx, dweight, false, mode);
}

void rmsnorm_backward_residual(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                               const Tensor& dresidual, const Tensor& dweight, GradMode mode, StreamRef stream) {
  const char* op = "rmsnorm_backward_residual";
  check_rmsnorm_backward_args(op, x, weight, rstd, dy, "dresidual", dresidual, dweight);
  if (x.is_cuda()) {
    SY_ON_CUDA(cuda::rmsnorm_backward_residual(x, weight, rstd, dy, dresidual, dweight, mode, stream));
    return;
  }
  rmsnorm_backward_any(x, weight, rstd, dy, dresidual, dweight, true, mode);
}

}  // namespace sy
