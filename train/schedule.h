// Learning-rate schedule: linear warmup to the peak, then cosine, linear or constant decay to
// min_lr_ratio x peak at the last step.
#pragma once

#include "train/config.h"

namespace sy {

// step: 0-based optimizer step in [0, train.steps).
double learning_rate(const Config& config, int step);

}  // namespace sy
