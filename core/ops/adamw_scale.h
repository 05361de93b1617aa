// The factor AdamW multiplies each gradient by, shared by the CPU reference and the kernel so
// both round it the same way: grad_scale, times min(1, max_norm / (sqrt(sum_squares) + 1e-6))
// when clipping (max_norm > 0), all in f32.
#pragma once

#include <cmath>

#include "core/rng.h"  // SY_HOST_DEVICE

namespace sy {

SY_HOST_DEVICE float adamw_clip_scale(float grad_scale, float max_norm, float sum_squares) {
  if (max_norm <= 0.0f) return grad_scale;
  const float clip = max_norm / (sqrtf(sum_squares) + 1e-6f);
  return grad_scale * (clip < 1.0f ? clip : 1.0f);
}

}  // namespace sy
