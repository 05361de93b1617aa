// Softmax cross-entropy over the vocabulary: argument checks, dispatch, and the CPU reference
// (forward then backward). Rows whose target is ignore_index count nothing and get no gradient.
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// Fails on a target that is neither ignore_index nor a class in [0, V): a silently skipped bad
// label would hide a data bug. Runs before anything is written, so a failed call leaves its
// outputs (and an aliased logits) untouched.
void check_targets(const char* op, const Tensor& targets, std::int64_t vocab, int ignore_index) {
  const std::int32_t* tp = targets.ptr<std::int32_t>();
  for (std::int64_t n = 0; n < targets.numel(); ++n) {
    SY_CHECK(tp[n] == ignore_index || (tp[n] >= 0 && tp[n] < vocab))
        << op << ": row " << n << " has target " << tp[n] << ", outside [0, " << vocab << ") and not ignore_index "
        << ignore_index;
  }
}

template <class T>
void cross_entropy_forward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor& lse,
                               int ignore_index) {
  const std::int64_t rows = logits.size(0), vocab = logits.size(1);
  const T* xp = logits.ptr<T>();
  const std::int32_t* tp = targets.ptr<std::int32_t>();
  float* lp = losses.ptr<float>();
  float* sp = lse.ptr<float>();
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* xr = xp + n * vocab;
    double max = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < vocab; ++j) max = std::fmax(max, to_double(xr[j]));
    double sum = 0;
    for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(to_double(xr[j]) - max);
    const double row_lse = max + std::log(sum);
    sp[n] = float(row_lse);
    lp[n] = tp[n] == ignore_index ? 0.0f : float(row_lse - to_double(xr[tp[n]]));
  }
}

// dlogits[n, j] = (exp(x[n, j] - lse[n]) - [j == target[n]]) * grad_scale, from the saved f32
// lse as the CUDA kernel does (relative error ~1e-7, far below the fp64 gradient check's
// tolerance). Each element is read before it is written, so dlogits may alias logits.
template <class T>
void cross_entropy_backward_cpu(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dlogits,
                                float grad_scale, int ignore_index) {
  const std::int64_t rows = logits.size(0), vocab = logits.size(1);
  const T* xp = logits.ptr<T>();
  const std::int32_t* tp = targets.ptr<std::int32_t>();
  const float* sp = lse.ptr<float>();
  T* dp = dlogits.ptr<T>();
  for (std::int64_t n = 0; n < rows; ++n) {
    T* dr = dp + n * vocab;
    if (tp[n] == ignore_index) {
      for (std::int64_t j = 0; j < vocab; ++j) dr[j] = from_double<T>(0.0);
      continue;
    }
    const T* xr = xp + n * vocab;
    const double row_lse = sp[n];
    for (std::int64_t j = 0; j < vocab; ++j) {
      const double prob = std::exp(to_double(xr[j]) - row_lse);
      dr[j] = from_double<T>((prob - (j == tp[n] ? 1.0 : 0.0)) * double(grad_scale));
    }
  }
}

void check_cross_entropy_args(const char* op, const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  check_contiguous(op, "logits", logits);
  check_float(op, "logits", logits);
  SY_CHECK(logits.dim() == 2) << op << ": logits must be [N, V], got " << logits.describe();
  SY_CHECK(logits.size(1) > 0) << op << ": logits need at least one class, got " << logits.describe();
  check_contiguous(op, "targets", targets);
  check_shape(op, "targets", targets, {logits.size(0)});
  check_dtype(op, "targets", targets, DType::i32);
  check_contiguous(op, "lse", lse);
  check_shape(op, "lse", lse, {logits.size(0)});
  check_dtype(op, "lse", lse, DType::f32);
}

void check_losses(const char* op, const Tensor& logits, const Tensor& losses) {
  check_contiguous(op, "losses", losses);
  check_shape(op, "losses", losses, {logits.size(0)});
  check_dtype(op, "losses", losses, DType::f32);
}

void check_dlogits(const char* op, const Tensor& logits, const Tensor& dlogits) {
  check_contiguous(op, "dlogits", dlogits);
  check_shape(op, "dlogits", dlogits, logits.shape());
  check_dtype(op, "dlogits", dlogits, logits.dtype());
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor& lse,
                           int ignore_index, StreamRef stream) {
  const char* op = "cross_entropy_forward";
  check_cross_entropy_args(op, logits, targets, lse);
  check_losses(op, logits, losses);
  check_same_device(op, {&logits, &targets, &losses, &lse});
  if (logits.is_cuda()) {
    SY_ON_CUDA(cuda::cross_entropy_forward(logits, targets, losses, lse, ignore_index, stream));
    return;
  }
  check_targets(op, targets, logits.size(1), ignore_index);
  cpu::dispatch_float(logits, [&](auto* type) {
    cross_entropy_forward_cpu<std::remove_pointer_t<decltype(type)>>(logits, targets, losses, lse, ignore_index);
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dlogits,
                            float grad_scale, int ignore_index, StreamRef stream) {
  const char* op = "cross_entropy_backward";
  check_cross_entropy_args(op, logits, targets, lse);
  check_dlogits(op, logits, dlogits);
  check_same_device(op, {&logits, &targets, &lse, &dlogits});
  if (logits.is_cuda()) {
    SY_ON_CUDA(cuda::cross_entropy_backward(logits, targets, lse, dlogits, grad_scale, ignore_index, stream));
    return;
  }
  check_targets(op, targets, logits.size(1), ignore_index);
  cpu::dispatch_float(logits, [&](auto* type) {
    cross_entropy_backward_cpu<std::remove_pointer_t<decltype(type)>>(logits, targets, lse, dlogits, grad_scale,
                                                                      ignore_index);
  });
}

void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                    const Tensor& lse, const Tensor& dlogits, float grad_scale, int ignore_index,
                                    StreamRef stream) {
  const char* op = "cross_entropy_forward_backward";
  check_cross_entropy_args(op, logits, targets, lse);
  check_losses(op, logits, losses);
  check_dlogits(op, logits, dlogits);
  check_same_device(op, {&logits, &targets, &losses, &lse, &dlogits});
  // CUDA: one kernel, which reads the logits from DRAM once (the second pass hits L2).
  if (logits.is_cuda()) {
    SY_ON_CUDA(cuda::cross_entropy_forward_backward(logits, targets, losses, lse, dlogits, grad_scale, ignore_index,
                                                    stream));
    return;
  }
  cross_entropy_forward(logits, targets, losses, lse, ignore_index, stream);
  cross_entropy_backward(logits, targets, lse, dlogits, grad_scale, ignore_index, stream);
}

}  // namespace sy
