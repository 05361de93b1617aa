// What the router's CPU reference (router.cpp) and CUDA kernels (router.cu) share: the noise
// draws, so both devices see the same numbers, the layout of the statistics buffer, and the
// CUDA entry points, called only after router.cpp has checked and allocated everything.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/rng.h"
#include "moe/router.h"

#ifdef SY_WITH_CUDA
#define SY_ROUTER_ON_CUDA(call) call
#else
#define SY_ROUTER_ON_CUDA(call) SY_FAIL() << "this build has no CUDA backend, so " #call " cannot run"
#endif

namespace sy {

// Multiplicative jitter in [1-eps, 1+eps] for router-input element `index` ((token * d) + c),
// computed in float on both devices so the factors agree bit for bit.
SY_HOST_DEVICE float router_jitter_factor(RngKey key, std::uint64_t index, float eps) {
  key.purpose = std::uint32_t(RngPurpose::router_jitter);
  return 1.0f + eps * (2.0f * philox_uniform(key, index) - 1.0f);
}

// N(0, 1) draw for logit `index` ((token * E) + e) of Gaussian noisy top-k.
SY_HOST_DEVICE float router_noise_draw(RngKey key, std::uint64_t index) {
  key.purpose = std::uint32_t(RngPurpose::router_noise);
  return philox_normal(key, index);
}

// The statistics buffer, [2E + 3] f64, summed over dp when global numbers are needed:
// [0, E) choices per expert before dropping, [E, 2E) sum over tokens of probs[:, e],
// 2E tokens, 2E + 1 dropped choices, 2E + 2 sum over tokens of lse^2.
inline std::int64_t router_stats_size(int experts) { return 2 * std::int64_t(experts) + 3; }

namespace cuda {

// Fills state.routing, the saved tensors and the local statistics buffer `local`; the arena
// gives temporaries.
void router_forward(const RouterSettings& settings, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                    bool gaussian, bool jitter, std::int64_t capacity, Arena& arena, RouterState& state,
                    const Tensor& local, StreamRef stream);
// Losses, their gradients and the logged statistics from the local and dp-summed buffers.
void router_losses(const RouterSettings& settings, const Tensor& local, const Tensor& global, RouterState& state,
                   StreamRef stream);
void router_backward(const RouterState& state, const Tensor& w_router, const Tensor& w_noise, const Tensor& dgate,
                     const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, GradMode mode, Arena& arena,
                     StreamRef stream);

}  // namespace cuda
}  // namespace sy
