// diffusers' timestep_spacing ("linspace", "leading", "trailing"): the inference timesteps that
// set_timesteps picks, reproduced with numpy's float64 routines so they match bit for bit. One
// implementation for every sampler; the samplers differ only in the parameters below.
#pragma once

#include <cstdint>
#include <vector>

#include "dreamlora/schedulers/scheduler_config.h"

namespace dreamlora::schedulers {

struct TimestepSpacing {
  // Training timesteps usable: num_train_timesteps, or fewer when DPM-Solver clips low log-SNR ones.
  int64_t last_timestep = 0;
  // Points computed beyond n and then dropped from the small end (DPM-Solver computes n + 1).
  int64_t extra_points = 0;
  // linspace values rounded to integers (DDIM, DPM-Solver) or kept as float32 (Euler).
  bool round_linspace = true;
};

// n descending timesteps (as doubles) for config.timestep_spacing and config.steps_offset.
std::vector<double> spaced_timesteps(const SchedulerConfig& config, int64_t n,
                                     const TimestepSpacing& spacing);

}  // namespace dreamlora::schedulers
