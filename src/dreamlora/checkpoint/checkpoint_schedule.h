// CheckpointSchedule: decides after each optimizer step whether a checkpoint is due, from
// --checkpointing-steps N|auto and --checkpointing-minutes M (whichever comes first).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace dreamlora::checkpoint {

struct CheckpointScheduleOptions {
  std::optional<int64_t> every_steps;  // --checkpointing-steps N (N > 0); absent for 0 / empty / auto
  bool auto_steps = false;             // --checkpointing-steps auto: Young/Daly interval
  double every_minutes = 0;            // --checkpointing-minutes M; 0 = no time trigger
  double expected_uptime_s = 7200;     // --expected-uptime (MTBF for auto), default 2h
  int64_t num_steps = 0;               // the run's --num-steps: upper bound of the auto interval; 0 = none
  double min_interval_s = 10;          // auto bounds, in seconds of work
  double max_interval_s = 30 * 60;
  double write_share = 0.1;  // share of the background write time counted as cost (see .cpp)

  // steps_text: "" or "0" (no step trigger), a positive integer, or "auto". uptime_text: "" = 2h, else
  // a duration ("90m", "2h", "1d"). Errors name the flag.
  static CheckpointScheduleOptions parse(const std::string& steps_text, double minutes,
                                         const std::string& uptime_text);
  bool any_trigger() const { return every_steps.has_value() || auto_steps || every_minutes > 0; }
};

// Young/Daly first-order optimum: seconds of work between checkpoints that minimise the expected
// waste (checkpoint cost + lost work) for a checkpoint cost C and a mean time between failures M:
// T = sqrt(2 C M). 0 when either is not positive.
double young_daly_interval_seconds(double cost_seconds, double mtbf_seconds);

class CheckpointSchedule {
 public:
  using Clock = std::function<double()>;                   // seconds, monotonic
  using Logger = std::function<void(const std::string&)>;  // one line, no "dreamlora: " prefix

  // clock/log default to std::chrono::steady_clock and stderr ("dreamlora: <line>").
  explicit CheckpointSchedule(CheckpointScheduleOptions options, Clock clock = {}, Logger log = {});

  // After each optimizer step (global step number, seconds the step took). The first call starts
  // the timer (at now - step_seconds) and counts `step - 1` as the last checkpoint, so resumed runs
  // work without more set-up.
  void on_step(int64_t step, double step_seconds);
  // After on_step(step): true when any trigger fires.
  bool due(int64_t step) const;
  // After every checkpoint saved (scheduled or not): restarts the timer and the step count.
  // stall_seconds: time the step loop was blocked (snapshot + waiting for the writer);
  // write_seconds: duration of the most recently finished background write, 0 when unknown.
  // Auto mode re-estimates its interval from these.
  void on_checkpoint(int64_t step, double stall_seconds, double write_seconds = 0);

  // Auto: the interval in use (0 before the first step); fixed: N; no step trigger: 0.
  int64_t current_interval_steps() const { return interval_steps_; }
  double mean_step_seconds() const { return mean_step_s_; }
  double estimated_cost_seconds() const { return cost_s_; }  // auto; 0 before the first checkpoint
  const CheckpointScheduleOptions& options() const { return options_; }

  // Auto arithmetic, exposed for tests: the clamped interval in steps for a cost, MTBF and step time.
  static int64_t auto_interval_steps(const CheckpointScheduleOptions& o, double cost_seconds,
                                     double step_seconds);

 private:
  void set_interval(int64_t steps, const std::string& why);

  CheckpointScheduleOptions options_;
  Clock clock_;
  Logger log_;
  bool started_ = false;
  int64_t last_checkpoint_step_ = 0;
  double last_checkpoint_time_ = 0;
  int64_t interval_steps_ = 0;
  int64_t steps_measured_ = 0;
  double mean_step_s_ = 0;
  double cost_s_ = 0;
  bool cost_measured_ = false;
};

}  // namespace dreamlora::checkpoint
