// Training telemetry: metrics.jsonl (one JSON line per step), a loss/LR curve as loss.svg that a
// browser opens, a terminal progress bar (plain log lines when stderr is not a terminal), and the end
// summary with checkpoint stall figures.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "dreamlora/checkpoint/background_writer.h"
#include "dreamlora/io/image.h"
#include "dreamlora/train/tensorboard_writer.h"

namespace dreamlora::train {

class MetricsLog {
 public:
  // Opens <dir>/metrics.jsonl (report_to jsonl or all) and a new TensorBoard event file in <dir>/logs
  // (tensorboard or all); lines and events for steps after resume_step (done after the last checkpoint by a
  // run that then died) are dropped, so the logs always match the weights and each step appears once.
  MetricsLog(const std::filesystem::path& dir, int64_t resume_step, const std::string& report_to = "all");
  // unix_time: when the step ended (a loss read later is recorded with its own step's time); < 0: now.
  // loss_scale < 0: no loss scaling (not fp16). TensorBoard also gets the step time (seconds since the
  // previous step recorded by this process).
  void record(int64_t step, double loss, double lr, double unix_time = -1, double loss_scale = -1);
  // Validation images as TensorBoard image summaries (validation/<i>); the PNG files are the trainer's.
  void record_images(int64_t step, const std::vector<io::Image>& images);
  void record_checkpoint(int64_t step, double stall_seconds);
  void write_svg(const std::filesystem::path& path) const;
  void print_summary(const std::vector<checkpoint::WriteStats>& writes) const;

  struct Point {
    int64_t step;
    double loss, lr, time;
  };
  const std::vector<Point>& points() const { return points_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  double previous_step_time_ = -1;
  std::vector<Point> points_;
  std::vector<double> stalls_;
  double start_;
};

// Renders the loss (and LR) curve as a standalone SVG document.
std::string render_loss_svg(const std::vector<MetricsLog::Point>& points);

class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t start, int64_t log_every);
  // last_checkpoint_step: the step of the newest checkpoint (< 0: none); its age is timed from the
  // first update that reports it.
  void update(int64_t step, double loss, double lr, int64_t last_checkpoint_step = -1);
  void finish();

 private:
  int64_t total_, start_, log_every_;
  bool tty_;
  double t0_;
  int64_t checkpoint_step_ = -1;
  double checkpoint_time_ = -1;
};

}  // namespace dreamlora::train
