// scale_in_place: the 1/dp averaging of reduced gradients, x *= factor on x's device. Kept here,
// beside its one caller, because the collectives only sum.
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace sy {

// x: [n] f32, contiguous, on any device.
void scale_in_place(const Tensor& x, float factor, StreamRef stream = {});

namespace cuda {
void scale_in_place(const Tensor& x, float factor, StreamRef stream);
}

}  // namespace sy
