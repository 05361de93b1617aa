// Learning-rate schedule.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace sy {

double learning_rate(const Config& c, int step) {
  const double peak = c.optimizer.lr, floor = peak * c.schedule.min_lr_ratio;
  const int warmup = c.schedule.warmup_steps, total = c.train.steps;
  if (step < warmup) return peak * double(step + 1) / double(warmup);
  if (c.schedule.decay == "constant" || total <= warmup + 1) return peak;
  const double progress = std::clamp(double(step - warmup) / double(total - 1 - warmup), 0.0, 1.0);
  if (c.schedule.decay == "linear") return peak + (floor - peak) * progress;
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace sy
