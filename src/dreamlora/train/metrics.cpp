#include "dreamlora/train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/json.h"
#include "dreamlora/train/progress.h"

namespace dreamlora::train {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

MetricsLog::MetricsLog(const std::filesystem::path& dir, int64_t resume_step, const std::string& report_to)
    : start_(now_seconds()) {
  if (report_to == "tensorboard" || report_to == "all")
    tensorboard_ = std::make_unique<TensorBoardWriter>(dir / "logs", resume_step);
  if (report_to != "jsonl" && report_to != "all") return;
  path_ = dir / "metrics.jsonl";
  std::vector<std::string> kept;
  {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      try {
        auto j = io::Json::parse(line);
        if (j.value("step", int64_t{0}) > resume_step) continue;
        if (j.contains("loss"))
          points_.push_back({j["step"].get<int64_t>(), j["loss"].get<double>(), j["lr"].get<double>(),
                             j.value("time", 0.0)});
        kept.push_back(line);
      } catch (...) {
        // a torn last line from a killed run
      }
    }
  }
  std::string text;
  for (const auto& l : kept) text += l + "\n";
  io::write_file_durably(path_, text);
  out_.open(path_, std::ios::app);
}

void MetricsLog::record(int64_t step, double loss, double lr, double unix_time, double loss_scale) {
  const double time = unix_time < 0 ? unix_seconds() : unix_time;
  if (out_.is_open()) {
    io::Json j = {{"step", step}, {"loss", loss}, {"lr", lr}, {"time", time}};
    out_ << j.dump() << "\n";
    out_.flush();
  }
  if (tensorboard_) {
    tensorboard_->add_scalar(step, "train/loss", loss, time);
    tensorboard_->add_scalar(step, "train/lr", lr, time);
    if (previous_step_time_ >= 0)
      tensorboard_->add_scalar(step, "train/step_time_s", time - previous_step_time_, time);
    if (loss_scale >= 0) tensorboard_->add_scalar(step, "train/loss_scale", loss_scale, time);
  }
  previous_step_time_ = time;
  points_.push_back({step, loss, lr, time});
}

void MetricsLog::record_images(int64_t step, const std::vector<io::Image>& images) {
  if (!tensorboard_) return;
  for (size_t i = 0; i < images.size(); ++i)
    tensorboard_->add_image(step, "validation/" + std::to_string(i), images[i].width, images[i].height,
                            images[i].rgb);
}

void MetricsLog::record_checkpoint(int64_t step, double stall_seconds) {
  stalls_.push_back(stall_seconds);
  if (!out_.is_open()) return;
  io::Json j = {{"step", step}, {"checkpoint_stall_s", stall_seconds}, {"time", unix_seconds()}};
  out_ << j.dump() << "\n";
  out_.flush();
}

std::string render_loss_svg(const std::vector<MetricsLog::Point>& points) {
  const double W = 800, H = 400, L = 60, R = 60, T = 30, B = 40;
  std::ostringstream svg;
  svg << std::fixed << std::setprecision(2);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" viewBox=\"0 0 " << W << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg << "<text x=\"" << L
      << "\" y=\"18\">dreamlora training loss (blue, left) and learning rate (orange, right)</text>\n";
  if (points.empty()) {
    svg << "<text x=\"" << L << "\" y=\"" << H / 2 << "\">no steps yet</text>\n</svg>\n";
    return svg.str();
  }
  double smin = points.front().step, smax = points.back().step;
  double lmin = 1e300, lmax = -1e300, rmax = 0;
  for (const auto& p : points) {
    if (std::isfinite(p.loss)) lmin = std::min(lmin, p.loss), lmax = std::max(lmax, p.loss);
    rmax = std::max(rmax, p.lr);
  }
  if (smax <= smin) smax = smin + 1;
  if (lmax <= lmin) lmax = lmin + 1e-6;
  if (rmax <= 0) rmax = 1;
  auto x = [&](double s) { return L + (s - smin) / (smax - smin) * (W - L - R); };
  auto yl = [&](double v) { return T + (1 - (v - lmin) / (lmax - lmin)) * (H - T - B); };
  auto yr = [&](double v) { return T + (1 - v / rmax) * (H - T - B); };
  svg << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
      << "\" stroke=\"black\"/>\n";
  svg << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B
      << "\" stroke=\"black\"/>\n";
  svg << "<text x=\"" << L << "\" y=\"" << H - 20 << "\">step " << static_cast<int64_t>(smin) << "</text>\n";
  svg << "<text x=\"" << W - R - 60 << "\" y=\"" << H - 20 << "\">step " << static_cast<int64_t>(smax)
      << "</text>\n";
  svg << std::setprecision(4);
  svg << "<text x=\"4\" y=\"" << T + 4 << "\">" << lmax << "</text>\n";
  svg << "<text x=\"4\" y=\"" << H - B << "\">" << lmin << "</text>\n";
  svg << "<text x=\"" << W - R + 4 << "\" y=\"" << T + 4 << "\">" << rmax << "</text>\n";
  svg << std::setprecision(2);
  svg << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (const auto& p : points)
    if (std::isfinite(p.loss)) svg << x(p.step) << "," << yl(p.loss) << " ";
  svg << "\"/>\n<polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"1\" points=\"";
  for (const auto& p : points) svg << x(p.step) << "," << yr(p.lr) << " ";
  svg << "\"/>\n</svg>\n";
  return svg.str();
}

void MetricsLog::write_svg(const std::filesystem::path& path) const {
  io::write_file_atomically(path, render_loss_svg(points_));
}

void MetricsLog::print_summary(const std::vector<checkpoint::WriteStats>& writes) const {
  if (points_.empty()) return;
  std::cerr << "dreamlora: final loss " << points_.back().loss << " at step " << points_.back().step << "\n";
  if (!writes.empty()) {
    double stall = 0, write = 0;
    uint64_t bytes = 0;
    int failed = 0;
    for (const auto& w : writes) {
      stall += w.stall_seconds;
      write += w.write_seconds;
      bytes += w.bytes;
      failed += w.ok ? 0 : 1;
    }
    std::cerr << "dreamlora: " << writes.size() << " checkpoint writes, mean write "
              << write / writes.size() * 1000 << " ms, mean bytes " << bytes / writes.size()
              << (failed ? ", FAILED: " + std::to_string(failed) : "") << "\n";
  }
  if (!stalls_.empty()) {
    double total = 0;
    for (double s : stalls_) total += s;
    std::cerr << "dreamlora: mean checkpoint stall of the step loop " << total / stalls_.size() * 1000
              << " ms\n";
  }
}

ProgressBar::ProgressBar(int64_t total, int64_t start, int64_t log_every)
    : total_(total),
      start_(start),
      log_every_(std::max<int64_t>(1, log_every)),
      tty_(isatty(STDERR_FILENO) != 0),
      t0_(now_seconds()) {}

void ProgressBar::update(int64_t step, double loss, double lr, int64_t last_checkpoint_step) {
  const double now = now_seconds();
  const double elapsed = now - t0_;
  const double rate = (step - start_) / std::max(elapsed, 1e-9);
  const double eta = rate > 0 ? (total_ - step) / rate : 0;
  if (last_checkpoint_step >= 0 && last_checkpoint_step != checkpoint_step_) {
    checkpoint_step_ = last_checkpoint_step;
    checkpoint_time_ = now;
  }
  if (tty_) {
    TrainingProgressFields f;
    f.step = step;
    f.total = total_;
    f.it_per_s = rate;
    f.eta_s = rate > 0 ? eta : -1;
    f.loss = loss;
    f.lr = lr;
    f.checkpoint_age_s = checkpoint_time_ < 0 ? -1 : now - checkpoint_time_;
    rewrite_terminal_line(format_training_progress(f));
  } else if (step % log_every_ == 0 || step == total_) {
    std::ostringstream line;
    line << std::fixed << "step " << step << "/" << total_ << std::setprecision(4) << "  loss " << loss
         << std::scientific << std::setprecision(2) << "  lr " << lr << std::fixed << std::setprecision(2)
         << "  " << rate << " it/s  ETA " << static_cast<int64_t>(eta) << " s";
    std::cerr << "dreamlora: " << line.str() << std::endl;
  }
}

void ProgressBar::finish() {
  if (tty_) std::cerr << "\n";
}

}  // namespace dreamlora::train
