#include "dreamlora/schedulers/timestep_spacing.h"

#include <algorithm>

#include "dreamlora/schedulers/noise_schedule.h"

namespace dreamlora::schedulers {

std::vector<double> spaced_timesteps(const SchedulerConfig& config, int64_t n,
                                     const TimestepSpacing& spacing) {
  const int64_t T = config.num_train_timesteps;
  const int64_t last = spacing.last_timestep;
  const int64_t points = n + spacing.extra_points;
  std::vector<double> ts;
  if (config.timestep_spacing == "linspace") {
    const auto v = np::linspace(0, static_cast<double>(last - 1), points);
    for (int64_t i = points - 1; i >= spacing.extra_points; --i) {
      ts.push_back(spacing.round_linspace ? np::round(v[i]) : static_cast<float>(v[i]));
    }
  } else if (config.timestep_spacing == "leading") {
    const int64_t step_ratio = last / points;
    for (int64_t i = points - 1; i >= spacing.extra_points; --i) {
      ts.push_back(static_cast<double>(i * step_ratio + config.steps_offset));
    }
  } else {  // trailing: the step is always num_train_timesteps / n, from the last usable timestep
    const double step_ratio = static_cast<double>(T) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(last), 0, -step_ratio)) ts.push_back(np::round(v) - 1);
  }
  return ts;
}

}  // namespace dreamlora::schedulers
