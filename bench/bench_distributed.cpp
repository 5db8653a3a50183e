// Data-parallel scaling (issue: several GPUs or machines): runs `dreamlora launch --nproc-per-node N`
// on the fixtures' tiny-sd (else a generated tiny-sd) at resolution 64 and reports, per configuration,
// the median step time after warm-up (rank 0's metrics.jsonl), throughput in samples per second and
// scaling efficiency against one worker on one thread. A last row runs the same single-worker jobs side
// by side without communication: the most two processes get from this machine at once, so the gap to
// the 2-worker row is what data parallelism itself costs. Prints a table and writes JSON.
//   bench_distributed [out.json] [dreamlora binary]      BENCH_STEPS (default 10), BENCH_DEVICE (cpu|cuda)
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

std::string g_bin;

pid_t start(const std::vector<std::string>& args, const fs::path& log) {
  return bench::spawn(g_bin, args, log);
}

int finish(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int run(const std::vector<std::string>& args, const fs::path& log) {
  return finish(start(args, log));
}

// Seconds between consecutive step lines of metrics.jsonl, skipping the first step (warm-up).
double median_step_seconds(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  std::vector<double> steps;
  double prev = -1;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);
    if (!j.contains("time")) continue;
    const double t = j["time"].get<double>();
    if (prev > 0) steps.push_back(t - prev);
    prev = t;
  }
  if (steps.empty()) return 0;
  std::sort(steps.begin(), steps.end());
  return steps[steps.size() / 2];
}

struct Config {
  std::string name;
  int workers;
  int threads_per_worker;
  int batch_per_worker;
  bool independent = false;  // separate single-worker runs at the same time: the machine's ceiling
};

}  // namespace

int main(int argc, char** argv) {
  const std::string json_out = argc > 1 ? argv[1] : "bench-distributed.json";
  g_bin = argc > 2 ? argv[2] : (fs::path(argv[0]).parent_path().parent_path() / "dreamlora").string();
  const int steps = std::getenv("BENCH_STEPS") ? std::atoi(std::getenv("BENCH_STEPS")) : 10;
  const std::string device = std::getenv("BENCH_DEVICE") ? std::getenv("BENCH_DEVICE") : "cpu";
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto work = fs::temp_directory_path() / ("dreamlora-bench-dist-" + std::to_string(getpid()));
  fs::create_directories(work);
  fs::path model = fs::path(DREAMLORA_FIXTURES_DIR) / "tiny-sd";
  if (!fs::exists(model / "model_index.json")) {
    model = work / "tiny-sd";
    run({"make-tiny-model", model.string()}, work / "mk1.log");
  }
  run({"make-demo-data", (work / "images").string(), "--count", "8", "--size", "64"}, work / "mk2.log");

  // Per-worker threads: the cores shared out, so N workers never use more cores than one worker did.
  const int half = std::max(1, cores / 2);
  std::vector<Config> configs = {{"1 worker, 1 thread, b1", 1, 1, 1},
                                 {"1 worker, " + std::to_string(cores) + " threads, b2", 1, cores, 2},
                                 {"2 workers, " + std::to_string(half) + " thread(s), b1 each", 2, half, 1},
                                 {"2 separate runs at once (ceiling)", 2, half, 1, true}};
  Json results = Json::array();
  double base_throughput = 0;
  std::cout << std::left << std::setw(34) << "config" << std::right << std::setw(14) << "global batch"
            << std::setw(12) << "step (s)" << std::setw(16) << "samples/s" << std::setw(22)
            << "efficiency vs 1x1" << "\n";
  for (const auto& c : configs) {
    const fs::path out = work / ("out-" + std::to_string(results.size()));
    std::vector<std::string> worker = {"--threads",
                                       std::to_string(c.threads_per_worker),
                                       "train",
                                       "--model",
                                       model.string(),
                                       "--image-path",
                                       (work / "images").string(),
                                       "--prompt",
                                       "a photo of sks toy",
                                       "--resolution",
                                       "64",
                                       "--num-steps",
                                       std::to_string(steps),
                                       "--batch-size",
                                       std::to_string(c.batch_per_worker),
                                       "--rank",
                                       "4",
                                       "--device",
                                       device,
                                       "--checkpointing-steps",
                                       "1000000",
                                       "--log-every",
                                       "1000",
                                       "--output-dir",
                                       out.string()};
    int status = 0;
    double step = 0;
    if (c.independent) {
      std::vector<pid_t> pids;
      for (int i = 0; i < c.workers; ++i) {
        auto args = worker;
        args.back() = out.string() + "-" + std::to_string(i);
        pids.push_back(start(args, out.string() + "-" + std::to_string(i) + ".log"));
      }
      for (int i = 0; i < c.workers; ++i) {
        status = std::max(status, finish(pids[i]));
        step = std::max(step, median_step_seconds(out.string() + "-" + std::to_string(i) + "/metrics.jsonl"));
      }
    } else {
      std::vector<std::string> args = {"launch", "--nproc-per-node", std::to_string(c.workers), "--"};
      args.insert(args.end(), worker.begin(), worker.end());
      status = run(args, out.string() + ".log");
      step = median_step_seconds(out / "metrics.jsonl");
    }
    if (status != 0) {
      std::cerr << c.name << ": dreamlora exited with " << status << " (see " << out.string() << ".log)\n";
      continue;
    }
    const int global_batch = c.workers * c.batch_per_worker;
    const double throughput = step > 0 ? global_batch / step : 0;
    if (results.empty()) base_throughput = throughput;
    // Efficiency: throughput per core used, relative to one worker on one core.
    const int cores_used = c.workers * c.threads_per_worker;
    const double efficiency = base_throughput > 0 ? throughput / (base_throughput * cores_used) : 0;
    results.push_back({{"config", c.name},
                       {"workers", c.workers},
                       {"threads_per_worker", c.threads_per_worker},
                       {"batch_per_worker", c.batch_per_worker},
                       {"global_batch", global_batch},
                       {"device", device},
                       {"median_step_s", step},
                       {"samples_per_s", throughput},
                       {"efficiency_per_core", efficiency}});
    std::cout << std::left << std::setw(34) << c.name << std::right << std::setw(14) << global_batch
              << std::fixed << std::setprecision(3) << std::setw(12) << step << std::setw(16) << throughput
              << std::setw(21) << std::setprecision(0) << efficiency * 100 << "%\n";
  }
  std::ofstream(json_out) << results.dump(2) << "\n";
  std::cout << "model " << model.string() << ", resolution 64, " << steps << " steps, " << cores
            << " cores, device " << device << "; wrote " << json_out << "\n";
  fs::remove_all(work);
  return 0;
}
