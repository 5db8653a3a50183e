// Progress on the terminal: on a terminal (stderr is a tty) one line rewritten in place, like tqdm;
// otherwise nothing here (the trainer's periodic log lines say the same in a log file). The training
// line shows step/total, it/s, ETA, loss, LR and the age of the last checkpoint; class-image generation
// and validation images show lines of their own.
#pragma once

#include <cstdint>
#include <string>

namespace dreamlora::train {

struct TrainingProgressFields {
  int64_t step = 0, total = 0;
  double it_per_s = 0;
  double eta_s = -1;  // < 0: unknown
  double loss = 0, lr = 0;
  double checkpoint_age_s = -1;  // < 0: no checkpoint yet in this run
};

// "12s", "1:05", "1:02:03" (tqdm's way of writing durations).
std::string format_duration(double seconds);
// "[##########..........] 120/500  24% | 3.21 it/s | ETA 1:58 | loss 0.1234 | lr 1.00e-04 | ckpt 35s ago"
std::string format_training_progress(const TrainingProgressFields& fields, int bar_width = 20);
// "class images [####......] 12/100 | 0.52 it/s | ETA 2:49"
std::string format_task_progress(const std::string& label, int64_t done, int64_t total, double it_per_s,
                                 int bar_width = 20);

bool stderr_is_terminal();
// Rewrites the current terminal line (carriage return, text, clear to the end of the line).
void rewrite_terminal_line(const std::string& text);

// A task's own progress line on a terminal (class images, validation images); silent otherwise.
class TaskProgress {
 public:
  TaskProgress(std::string label, int64_t total);
  ~TaskProgress();
  void update(int64_t done, int64_t total = -1);  // total >= 0 replaces the total
  void finish();                                  // ends the line (once)

 private:
  std::string label_;
  int64_t total_;
  bool tty_, open_ = false;
  double t0_;
};

}  // namespace dreamlora::train
