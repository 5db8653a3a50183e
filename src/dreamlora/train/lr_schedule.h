// Learning-rate schedules with diffusers' get_scheduler formulas (as LambdaLR multipliers of the base LR).
// The schedule is a pure function of the optimizer step, so its checkpoint state is the step alone.
#pragma once

#include <string>

namespace dreamlora::train {

struct LRScheduleOptions {
  std::string name =
      "constant";  // constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  int num_cycles = 1;    // cosine_with_restarts only (plain cosine uses diffusers' fixed 0.5)
  double power = 1.0;    // polynomial
  double lr_end = 1e-7;  // polynomial (diffusers' default)
};

// Validates the name; error names the flag --scheduler.
void check_lr_schedule_name(const std::string& name);

// Multiplier of the base learning rate for the optimizer step `step` (0-based: the first update uses 0).
double lr_multiplier(const LRScheduleOptions& options, double base_lr, int64_t step);

}  // namespace dreamlora::train
