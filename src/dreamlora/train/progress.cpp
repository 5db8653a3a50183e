#include "dreamlora/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace dreamlora::train {

namespace {

double progress_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string progress_bar(int64_t done, int64_t total, int width) {
  const double fraction = total > 0 ? std::clamp(static_cast<double>(done) / total, 0.0, 1.0) : 0.0;
  const int filled = static_cast<int>(width * fraction);
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

}  // namespace

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || std::isinf(seconds)) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

std::string format_training_progress(const TrainingProgressFields& f, int bar_width) {
  std::ostringstream os;
  const int64_t percent = f.total > 0 ? f.step * 100 / f.total : 0;
  os << progress_bar(f.step, f.total, bar_width) << " " << f.step << "/" << f.total << " " << std::setw(3)
     << percent << "% | " << std::fixed << std::setprecision(2) << f.it_per_s << " it/s | ETA "
     << (f.eta_s < 0 ? std::string("?") : format_duration(f.eta_s)) << " | loss " << std::setprecision(4)
     << f.loss << " | lr " << std::scientific << std::setprecision(2) << f.lr << " | ckpt "
     << (f.checkpoint_age_s < 0 ? std::string("none yet") : format_duration(f.checkpoint_age_s) + " ago");
  return os.str();
}

std::string format_task_progress(const std::string& label, int64_t done, int64_t total, double it_per_s,
                                 int bar_width) {
  std::ostringstream os;
  const double eta = it_per_s > 0 ? (total - done) / it_per_s : -1;
  os << label << " " << progress_bar(done, total, bar_width) << " " << done << "/" << total << " | "
     << std::fixed << std::setprecision(2) << it_per_s << " it/s | ETA "
     << (eta < 0 ? std::string("?") : format_duration(eta));
  return os.str();
}

bool stderr_is_terminal() {
  return isatty(STDERR_FILENO) != 0;
}

void rewrite_terminal_line(const std::string& text) {
  std::cerr << "\r" << text << "\x1b[K" << std::flush;
}

TaskProgress::TaskProgress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(stderr_is_terminal()), t0_(progress_clock_seconds()) {}

TaskProgress::~TaskProgress() {
  finish();
}

void TaskProgress::update(int64_t done, int64_t total) {
  if (total >= 0) total_ = total;
  if (!tty_) return;
  const double elapsed = progress_clock_seconds() - t0_;
  rewrite_terminal_line(format_task_progress(label_, done, total_, elapsed > 0 ? done / elapsed : 0));
  open_ = true;
}

void TaskProgress::finish() {
  if (open_) std::cerr << "\n";
  open_ = false;
}

}  // namespace dreamlora::train
