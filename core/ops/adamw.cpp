// AdamW on fp32 master weights: argument checks, dispatch, and the CPU reference. The update is
// PyTorch's torch.optim.AdamW (decoupled weight decay applied before the Adam step).
#include <cmath>
#include <span>
#include <type_traits>

#include "core/ops.h"
#include "core/ops/adamw_scale.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

// In double, one element at a time; m, v and params are stored back as f32, and the copy is
// the stored f32 weight rounded to its dtype (as the kernel does), not the double.
template <class C>
void adamw_update_cpu(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                      const Tensor& param_copy, const AdamWParams& hp) {
  float* pp = params.ptr<float>();
  const float* gp = grads.ptr<float>();
  float* mp = m.ptr<float>();
  float* vp = v.ptr<float>();
  C* cp = param_copy.defined() ? param_copy.ptr<C>() : nullptr;
  const double beta1 = hp.beta1, beta2 = hp.beta2, lr = hp.lr;
  const float scale = hp.clip_sum_squares.defined()
                          ? adamw_clip_scale(hp.grad_scale, hp.max_grad_norm, hp.clip_sum_squares.ptr<float>()[0])
                          : hp.grad_scale;
  const double bias_correction1 = 1.0 - std::pow(beta1, hp.step);
  const double bias_correction2 = 1.0 - std::pow(beta2, hp.step);
  for (std::int64_t i = 0; i < params.numel(); ++i) {
    const double g = double(gp[i]) * double(scale);
    double p = double(pp[i]) * (1.0 - lr * double(hp.weight_decay));
    const double m_new = beta1 * double(mp[i]) + (1.0 - beta1) * g;
    const double v_new = beta2 * double(vp[i]) + (1.0 - beta2) * g * g;
    p -= lr * (m_new / bias_correction1) / (std::sqrt(v_new / bias_correction2) + double(hp.eps));
    mp[i] = float(m_new);
    vp[i] = float(v_new);
    pp[i] = float(p);
    if (cp) cp[i] = from_double<C>(double(pp[i]));
  }
}

// Both entry points: the checks name the op the caller called.
void adamw_ranges(const char* op, const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                  const Tensor& param_copy, std::span<const AdamWRange> ranges, const AdamWParams& hp,
                  StreamRef stream) {
  check_contiguous(op, "params", params);
  check_dtype(op, "params", params, DType::f32);
  SY_CHECK(params.dim() == 1) << op << ": params must be [n], got " << params.describe();
  const Shape shape = params.shape();
  for (auto [name, t] : {std::pair{"grads", &grads}, std::pair{"m", &m}, std::pair{"v", &v}}) {
    check_contiguous(op, name, *t);
    check_shape(op, name, *t, shape);
    check_dtype(op, name, *t, DType::f32);
  }
  if (param_copy.defined()) {
    check_contiguous(op, "param_copy", param_copy);
    check_shape(op, "param_copy", param_copy, shape);
    SY_CHECK(param_copy.dtype() == DType::bf16 || param_copy.dtype() == DType::f32)
        << op << ": param_copy must be bf16 or f32, got " << param_copy.describe();
  }
  if (hp.clip_sum_squares.defined()) {
    check_shape(op, "clip_sum_squares", hp.clip_sum_squares, {1});
    check_dtype(op, "clip_sum_squares", hp.clip_sum_squares, DType::f32);
    SY_CHECK(hp.max_grad_norm > 0.0f) << op << ": clip_sum_squares needs max_grad_norm > 0, got " << hp.max_grad_norm;
  }
  check_same_device(op, {&params, &grads, &m, &v, &param_copy, &hp.clip_sum_squares});
  SY_CHECK(hp.step >= 1) << op << ": step is 1-based, got " << hp.step;
  SY_CHECK(hp.beta1 >= 0.0f && hp.beta1 < 1.0f && hp.beta2 >= 0.0f && hp.beta2 < 1.0f)
      << op << ": betas must lie in [0, 1), got beta1 " << hp.beta1 << " and beta2 " << hp.beta2;
  std::int64_t end = 0;  // where the previous range ended
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const AdamWRange& r = ranges[i];
    SY_CHECK(r.offset >= end && r.numel >= 0 && r.offset + r.numel <= params.numel())
        << op << ": range " << i << " [" << r.offset << ", " << r.offset + r.numel << ") must lie in [" << end
        << ", " << params.numel() << "): ranges ascend, do not overlap and stay inside params "
        << params.describe();
    end = r.offset + r.numel;
  }
  if (params.is_cuda()) {
    SY_ON_CUDA(cuda::adamw_update_ranges(params, grads, m, v, param_copy, ranges.data(), ranges.size(), hp, stream));
    return;
  }
  for (const AdamWRange& r : ranges) {
    AdamWParams range_hp = hp;
    range_hp.weight_decay = r.weight_decay;
    auto part = [&](const Tensor& t) { return t.defined() ? t.slice_rows(r.offset, r.numel) : Tensor(); };
    if (!param_copy.defined()) {
      adamw_update_cpu<float>(part(params), part(grads), part(m), part(v), Tensor(), range_hp);
      continue;
    }
    cpu::dispatch_float(param_copy, [&](auto* type) {
      adamw_update_cpu<std::remove_pointer_t<decltype(type)>>(part(params), part(grads), part(m), part(v),
                                                             part(param_copy), range_hp);
    });
  }
}

}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                  const Tensor& param_copy, const AdamWParams& hp, StreamRef stream) {
  const AdamWRange whole{0, params.numel(), hp.weight_decay};
  adamw_ranges("adamw_update", params, grads, m, v, param_copy, std::span(&whole, 1), hp, stream);
}

void adamw_update_ranges(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                         const Tensor& param_copy, std::span<const AdamWRange> ranges, const AdamWParams& hp,
                         StreamRef stream) {
  adamw_ranges("adamw_update_ranges", params, grads, m, v, param_copy, ranges, hp, stream);
}

}  // namespace sy
