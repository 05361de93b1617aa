// AdamW on CUDA: one elementwise kernel over the fp32 master weights, fp32 math in PyTorch's
// order of operations. Bias corrections depend only on the step, so they are computed once on
// the host in double and passed in.
#include <cmath>

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;

struct AdamWScalars {
  float beta1, beta2, eps, grad_scale;
  float decay;                  // 1 - lr * weight_decay
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

// param = param * decay - step_size * m / (sqrt(v) / sqrt(bc2) + eps) after the moment updates;
// copy[i] (if given) = the new param in the copy's dtype. Traffic per element: params, grads,
// m, v read (16 bytes), params, m, v and the copy written (12 bytes + 2 or 4). Bandwidth-bound,
// so a plain grid-stride loop with coalesced 4-byte accesses; no element is shared between
// threads, so there is nothing to synchronise.
template <class C>
__global__ void adamw_update_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                                    float* __restrict__ v, C* __restrict__ copy, std::int64_t n, AdamWScalars s) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x) {
    const float g = grads[i] * s.grad_scale;
    const float m_new = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    const float v_new = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    const float p = params[i] * s.decay - s.step_size * m_new / (sqrtf(v_new) / s.bias_correction2_sqrt + s.eps);
    m[i] = m_new;
    v[i] = v_new;
    params[i] = p;
    if (copy) store_f32(copy + i, p);
  }
}

inline unsigned adamw_grid(std::int64_t n) {
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  return unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                  const Tensor& param_copy, const AdamWParams& hp, StreamRef stream) {
  const std::int64_t n = params.numel();
  if (n == 0) return;
  AdamWScalars s;
  s.beta1 = hp.beta1;
  s.beta2 = hp.beta2;
  s.eps = hp.eps;
  s.grad_scale = hp.grad_scale;
  s.decay = float(1.0 - double(hp.lr) * double(hp.weight_decay));
  s.step_size = float(double(hp.lr) / (1.0 - std::pow(double(hp.beta1), hp.step)));
  s.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(hp.beta2), hp.step)));
  float* pp = params.ptr<float>();
  const float* gp = grads.ptr<float>();
  float* mp = m.ptr<float>();
  float* vp = v.ptr<float>();
  if (!param_copy.defined()) {
    adamw_update_kernel<float><<<adamw_grid(n), kBlock, 0, to_cuda(stream)>>>(pp, gp, mp, vp, nullptr, n, s);
  } else {
    dispatch_float(param_copy, [&](auto* type) {
      using C = std::remove_pointer_t<decltype(type)>;
      adamw_update_kernel<C><<<adamw_grid(n), kBlock, 0, to_cuda(stream)>>>(pp, gp, mp, vp,
                                                                           static_cast<C*>(param_copy.data()), n, s);
    });
  }
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
