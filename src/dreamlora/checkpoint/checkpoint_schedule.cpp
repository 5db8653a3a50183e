// Checkpoint triggers: every N steps (multiples of N, like diffusers), every M minutes of wall time
// since the last checkpoint, and the automatic Young/Daly interval.
#include "dreamlora/checkpoint/checkpoint_schedule.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "dreamlora/common/duration.h"
#include "dreamlora/common/error.h"

namespace dreamlora::checkpoint {

namespace {

// Cost estimate smoothing: one unusually slow save (e.g. the first, or one that waited for a slow
// disk) moves the interval half way, not all the way.
constexpr double kCostSmoothing = 0.5;
// Step time: a plain mean for the first steps, then an exponential moving average.
constexpr double kStepSmoothing = 0.05;
constexpr int64_t kNoUpperBound = int64_t{1} << 40;

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string human_seconds(double s) {
  if (s >= 3600) return fixed(s / 3600, 2) + " h";
  if (s >= 120) return fixed(s / 60, 1) + " min";
  return fixed(s, 1) + " s";
}

int64_t parse_steps(const std::string& text) {
  const size_t digits_from = !text.empty() && text[0] == '-' ? 1 : 0;
  bool ok = text.size() > digits_from && text.size() - digits_from <= 18 &&
            std::all_of(text.begin() + digits_from, text.end(), [](char c) { return c >= '0' && c <= '9'; });
  const long long v = ok ? std::stoll(text) : 0;
  DL_CHECK(ok, "--checkpointing-steps: '", text, "' is neither a whole number of steps nor 'auto'");
  DL_CHECK(v >= 0, "--checkpointing-steps: ", v, " is negative (0 turns the step trigger off)");
  return v;
}

}  // namespace

CheckpointScheduleOptions CheckpointScheduleOptions::parse(const std::string& steps_text, double minutes,
                                                           const std::string& uptime_text) {
  CheckpointScheduleOptions o;
  if (steps_text == "auto") {
    o.auto_steps = true;
  } else if (!steps_text.empty()) {
    int64_t n = parse_steps(steps_text);
    if (n > 0) o.every_steps = n;
  }
  DL_CHECK(std::isfinite(minutes) && minutes >= 0, "--checkpointing-minutes: ", minutes,
           " must be a non-negative number of minutes (0 turns the time trigger off)");
  o.every_minutes = minutes;
  if (!uptime_text.empty())
    o.expected_uptime_s = static_cast<double>(parse_duration(uptime_text, "--expected-uptime").count());
  return o;
}

double young_daly_interval_seconds(double cost_seconds, double mtbf_seconds) {
  if (!(cost_seconds > 0) || !(mtbf_seconds > 0)) return 0;
  return std::sqrt(2 * cost_seconds * mtbf_seconds);
}

int64_t CheckpointSchedule::auto_interval_steps(const CheckpointScheduleOptions& o, double cost_seconds,
                                                double step_seconds) {
  double t = young_daly_interval_seconds(cost_seconds, o.expected_uptime_s);
  t = std::clamp(t, o.min_interval_s, std::max(o.min_interval_s, o.max_interval_s));
  const int64_t upper = o.num_steps > 0 ? o.num_steps : kNoUpperBound;
  if (!(step_seconds > 0)) return upper;
  const double steps = std::ceil(t / step_seconds - 1e-9);  // at least min_interval_s of work
  if (steps >= static_cast<double>(upper)) return upper;
  return std::max<int64_t>(1, static_cast<int64_t>(steps));
}

CheckpointSchedule::CheckpointSchedule(CheckpointScheduleOptions options, Clock clock, Logger log)
    : options_(std::move(options)), clock_(std::move(clock)), log_(std::move(log)) {
  if (!clock_)
    clock_ = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };
  if (!log_) log_ = [](const std::string& line) { std::cerr << "dreamlora: " << line << std::endl; };
  if (options_.every_steps) interval_steps_ = *options_.every_steps;
}

void CheckpointSchedule::on_step(int64_t step, double step_seconds) {
  if (!started_) {
    started_ = true;
    last_checkpoint_step_ = step - 1;
    last_checkpoint_time_ = clock_() - std::max(0.0, step_seconds);
  }
  // The first step of a run includes warm-up (allocations, kernel selection, caches): the second
  // step's time replaces it.
  if (step_seconds >= 0 && std::isfinite(step_seconds)) {
    ++steps_measured_;
    if (steps_measured_ <= 2) {
      mean_step_s_ = step_seconds;
    } else {
      const double a = std::max(kStepSmoothing, 1.0 / static_cast<double>(steps_measured_ - 1));
      mean_step_s_ += a * (step_seconds - mean_step_s_);
    }
  }
  if (options_.auto_steps && !cost_measured_) {
    // Before any save was measured: the first checkpoint comes after min_interval_s of work, and
    // its measured cost sets the real interval.
    const double per_step = std::max(mean_step_s_, 1e-9);
    int64_t provisional =
        std::max<int64_t>(1, static_cast<int64_t>(std::ceil(options_.min_interval_s / per_step - 1e-9)));
    if (options_.num_steps > 0) provisional = std::min(provisional, options_.num_steps);
    if (interval_steps_ == 0) {
      set_interval(provisional, str("auto, provisional: a first checkpoint after ~",
                                    human_seconds(options_.min_interval_s), " of work measures its cost"));
    } else {
      interval_steps_ = provisional;  // follows the step time quietly until the first measured save
    }
  }
}

bool CheckpointSchedule::due(int64_t step) const {
  if (!started_ || step <= last_checkpoint_step_) return false;
  if (options_.every_steps && step % *options_.every_steps == 0) return true;
  if (options_.auto_steps && interval_steps_ > 0 && step - last_checkpoint_step_ >= interval_steps_)
    return true;
  if (options_.every_minutes > 0 && clock_() - last_checkpoint_time_ >= options_.every_minutes * 60)
    return true;
  return false;
}

// Cost C = stall + write_share x write time. The stall (snapshot copy + waiting for the previous write)
// is time the step loop does not train. The write itself runs on the background thread, overlapping
// training, but it competes with the data loader for disk and CPU and leaves the newest checkpoint
// not yet durable for its duration, so a small share of it counts too.
void CheckpointSchedule::on_checkpoint(int64_t step, double stall_seconds, double write_seconds) {
  started_ = true;
  last_checkpoint_step_ = step;
  last_checkpoint_time_ = clock_();
  if (!options_.auto_steps) return;
  const double cost = std::max(0.0, stall_seconds) + options_.write_share * std::max(0.0, write_seconds);
  if (!std::isfinite(cost)) return;
  cost_s_ = cost_measured_ ? cost_s_ + kCostSmoothing * (cost - cost_s_) : cost;
  cost_measured_ = true;
  const double raw = young_daly_interval_seconds(cost_s_, options_.expected_uptime_s);
  const int64_t steps = auto_interval_steps(options_, cost_s_, mean_step_s_);
  std::string why =
      str("auto: checkpoint cost ", fixed(cost_s_, 3), " s, expected uptime ",
          human_seconds(options_.expected_uptime_s), " -> sqrt(2 C MTBF) = ", human_seconds(raw), " of work");
  if (raw < options_.min_interval_s)
    why += str(", raised to the minimum ", human_seconds(options_.min_interval_s));
  if (raw > options_.max_interval_s)
    why += str(", lowered to the maximum ", human_seconds(options_.max_interval_s));
  why += str(", at ", fixed(mean_step_s_, 3), " s/step");
  set_interval(steps, why);
}

void CheckpointSchedule::set_interval(int64_t steps, const std::string& why) {
  if (steps == interval_steps_) return;
  interval_steps_ = steps;
  log_(str("checkpoint interval: every ", steps, " steps (", why, ")"));
}

}  // namespace dreamlora::checkpoint
