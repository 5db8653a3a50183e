// Training benchmarks (issue: embedded default, benchmarks): runs the dreamlora binary as a child process
// on generated tiny models and on the fixtures' tiny-sd, and reports, per configuration, the median step
// time after warm-up, peak RSS, checkpoint stall (background vs synchronous), bytes per checkpoint and
// restart-to-first-step. Prints a table and writes JSON (argv[1], default bench-train.json).
//   bench_train [out.json] [dreamlora binary]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "child_process.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

std::string g_bin;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct Run {
  int status = -1;
  double start = 0;    // unix time at fork
  double seconds = 0;  // wall time
  double peak_rss_mib = 0;
};

Run run(const std::vector<std::string>& args, const fs::path& log) {
  Run r;
  r.start = unix_now();
  pid_t pid = bench::spawn(g_bin, args, log);
  int status = 0;
  struct rusage ru{};
  wait4(pid, &status, 0, &ru);
  r.seconds = unix_now() - r.start;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.peak_rss_mib = ru.ru_maxrss / 1024.0;
  return r;
}

struct Metrics {
  std::vector<double> step_times;  // seconds between consecutive step lines
  std::vector<double> stalls;
  double first_step_time = 0;  // unix time of the first step line
};

Metrics read_metrics(const fs::path& file) {
  Metrics m;
  std::ifstream in(file);
  std::string line;
  double prev = -1;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);
    if (j.contains("checkpoint_stall_s")) {
      m.stalls.push_back(j["checkpoint_stall_s"].get<double>());
      prev = -1;  // the next step interval includes the checkpoint: not a step time
      continue;
    }
    double t = j["time"].get<double>();
    if (m.first_step_time == 0) m.first_step_time = t;
    if (prev > 0) m.step_times.push_back(t - prev);
    prev = t;
  }
  return m;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<std::string> train_args(const fs::path& model, const fs::path& images, const fs::path& out,
                                    int steps, int batch, int res, int ckpt_every, bool sync) {
  std::vector<std::string> a = {"train",
                                "--model",
                                model.string(),
                                "--image-path",
                                images.string(),
                                "--prompt",
                                "a photo of sks toy",
                                "--resolution",
                                std::to_string(res),
                                "--num-steps",
                                std::to_string(steps),
                                "--batch-size",
                                std::to_string(batch),
                                "--rank",
                                "4",
                                "--checkpointing-steps",
                                std::to_string(ckpt_every),
                                "--output-dir",
                                out.string(),
                                "--log-every",
                                "1000"};
  if (sync) a.push_back("--sync-checkpoints");
  return a;
}

uint64_t dir_bytes(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string json_out = argc > 1 ? argv[1] : "bench-train.json";
  g_bin = argc > 2 ? argv[2] : (fs::path(argv[0]).parent_path().parent_path() / "dreamlora").string();
  const int steps = std::getenv("BENCH_STEPS") ? std::atoi(std::getenv("BENCH_STEPS")) : 12;
  auto work = fs::temp_directory_path() / ("dreamlora-bench-" + std::to_string(getpid()));
  fs::create_directories(work);
  run({"make-tiny-model", (work / "tiny-sd").string()}, work / "mk1.log");
  run({"make-tiny-model", (work / "tiny-sdxl").string(), "--sdxl"}, work / "mk2.log");
  run({"make-demo-data", (work / "images").string(), "--count", "5", "--size", "64"}, work / "mk3.log");
  fs::path fixtures = DREAMLORA_FIXTURES_DIR;

  struct Config {
    std::string name;
    fs::path model;
    int batch;
  };
  std::vector<Config> configs = {{"tiny-sd b1", work / "tiny-sd", 1},
                                 {"tiny-sd b4", work / "tiny-sd", 4},
                                 {"tiny-sdxl b1", work / "tiny-sdxl", 1},
                                 {"tiny-sdxl b4", work / "tiny-sdxl", 4}};
  if (fs::exists(fixtures / "tiny-sd" / "model_index.json"))
    configs.push_back({"fixtures tiny-sd b1", fixtures / "tiny-sd", 1});

  Json results = Json::array();
  std::cout << std::left << std::setw(22) << "config" << std::right << std::setw(12) << "step (s)"
            << std::setw(12) << "peak RSS" << std::setw(14) << "stall bg (ms)" << std::setw(16)
            << "stall sync (ms)" << std::setw(14) << "ckpt bytes" << std::setw(18) << "restart->step1 (s)"
            << "\n";
  for (const auto& c : configs) {
    auto out = work / ("out-" + std::to_string(results.size()));
    auto r =
        run(train_args(c.model, work / "images", out, steps, c.batch, 64, 4, false), out.string() + ".log");
    if (r.status != 0) {
      std::cerr << c.name << ": dreamlora exited with " << r.status << " (see " << out.string() << ".log)\n";
      continue;
    }
    auto m = read_metrics(out / "metrics.jsonl");
    auto sync_out = work / ("sync-" + std::to_string(results.size()));
    run(train_args(c.model, work / "images", sync_out, 8, c.batch, 64, 2, true), sync_out.string() + ".log");
    auto ms = read_metrics(sync_out / "metrics.jsonl");
    // restart-to-first-step: resume the finished-at-4 checkpoint of a fresh short run
    auto resume_out = work / ("resume-" + std::to_string(results.size()));
    run(train_args(c.model, work / "images", resume_out, 4, c.batch, 64, 4, false),
        resume_out.string() + ".log");
    fs::remove(resume_out / "metrics.jsonl");
    auto rr = run(train_args(c.model, work / "images", resume_out, 5, c.batch, 64, 4, false),
                  resume_out.string() + ".2.log");
    auto mr = read_metrics(resume_out / "metrics.jsonl");
    const double restart = mr.first_step_time > 0 ? mr.first_step_time - rr.start : 0;
    const uint64_t ckpt_bytes = fs::exists(out / "checkpoint-4") ? dir_bytes(out / "checkpoint-4") : 0;
    Json j = {{"config", c.name},
              {"resolution", 64},
              {"batch", c.batch},
              {"median_step_s", median(m.step_times)},
              {"peak_rss_mib", r.peak_rss_mib},
              {"checkpoint_stall_background_ms", median(m.stalls) * 1000},
              {"checkpoint_stall_sync_ms", median(ms.stalls) * 1000},
              {"checkpoint_bytes", ckpt_bytes},
              {"restart_to_first_step_s", restart},
              {"steps_timed", m.step_times.size()}};
    results.push_back(j);
    std::cout << std::left << std::setw(22) << c.name << std::right << std::fixed << std::setprecision(3)
              << std::setw(12) << median(m.step_times) << std::setw(9) << std::setprecision(0)
              << r.peak_rss_mib << " MiB" << std::setprecision(2) << std::setw(14) << median(m.stalls) * 1000
              << std::setw(16) << median(ms.stalls) * 1000 << std::setw(14) << ckpt_bytes << std::setw(18)
              << std::setprecision(2) << restart << "\n";
  }
  std::ofstream(json_out) << results.dump(2) << "\n";
  std::cout << "wrote " << json_out << "\n";
  fs::remove_all(work);
  return 0;
}
