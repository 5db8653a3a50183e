#include "dreamlora/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

void check_lr_schedule_name(const std::string& name) {
  static const char* kNames[] = {"constant", "constant_with_warmup", "linear",
                                 "cosine",   "cosine_with_restarts", "polynomial"};
  for (const char* n : kNames)
    if (name == n) return;
  fail(
      str("--scheduler: unknown schedule '", name,
          "' (expected constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial)"));
}

double lr_multiplier(const LRScheduleOptions& o, double base_lr, int64_t step) {
  const double s = static_cast<double>(step);
  const double warmup = static_cast<double>(o.warmup_steps);
  const double total = static_cast<double>(o.total_steps);
  if (o.name == "constant") return 1.0;
  if (step < o.warmup_steps) return s / std::max(1.0, warmup);
  if (o.name == "constant_with_warmup") return 1.0;
  if (o.name == "linear") return std::max(0.0, (total - s) / std::max(1.0, total - warmup));
  const double progress = (s - warmup) / std::max(1.0, total - warmup);
  if (o.name == "cosine") return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
  if (o.name == "cosine_with_restarts") {
    if (progress >= 1.0) return 0.0;
    return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * std::fmod(o.num_cycles * progress, 1.0))));
  }
  if (o.name == "polynomial") {
    DL_CHECK(base_lr > o.lr_end, "--lr (", base_lr,
             ") must be larger than the polynomial schedule's end LR (", o.lr_end, ")");
    if (s > total) return o.lr_end / base_lr;
    const double remaining = 1.0 - (s - warmup) / (total - warmup);
    return ((base_lr - o.lr_end) * std::pow(remaining, o.power) + o.lr_end) / base_lr;
  }
  check_lr_schedule_name(o.name);
  return 1.0;
}

}  // namespace dreamlora::train
