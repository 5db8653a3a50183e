// Where a training step's time goes, op by op: the fixtures' tiny-sd UNet at latent 4x32x32, batch 1,
// LoRA rank 4 on the attention projections, MSE loss, forward+backward — the ~95 % of a dreamlora step.
// Records 5 steps after 2 warm-up steps with libtorch's profiler, writes a Chrome trace (argv[1],
// default unet-step.trace.json) and prints the ops by self time (time not spent in nested ops).
//   profile_unet_step [trace.json]      DREAMLORA_THREADS (default 2)
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "dreamlora/common/threads.h"
#include "dreamlora/nn/linear.h"
#include "dreamlora/unet/unet_2d_condition.h"

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct OpTime {
  double self_us = 0, total_us = 0;
  int64_t calls = 0;
};

// Self time per op name from the trace's complete events ("ph": "X"), nested per thread by time.
std::map<std::string, OpTime> self_times(const nlohmann::json& trace) {
  std::map<int64_t, std::vector<nlohmann::json>> by_thread;
  for (const auto& e : trace)
    if (e.value("ph", "") == "X") by_thread[e.value("tid", int64_t{0})].push_back(e);
  std::map<std::string, OpTime> out;
  for (auto& [tid, events] : by_thread) {
    std::sort(events.begin(), events.end(), [](const auto& a, const auto& b) {
      return a["ts"].template get<double>() != b["ts"].template get<double>()
                 ? a["ts"].template get<double>() < b["ts"].template get<double>()
                 : a["dur"].template get<double>() > b["dur"].template get<double>();
    });
    std::vector<std::pair<double, std::string>> stack;  // (end, name)
    for (const auto& e : events) {
      const double ts = e["ts"].get<double>(), dur = e["dur"].get<double>();
      const std::string name = e["name"].get<std::string>();
      while (!stack.empty() && stack.back().first <= ts) stack.pop_back();
      if (!stack.empty()) out[stack.back().second].self_us -= dur;
      auto& t = out[name];
      t.self_us += dur;
      t.total_us += dur;
      t.calls += 1;
      stack.emplace_back(ts + dur, name);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string trace_path = argc > 1 ? argv[1] : "unet-step.trace.json";
  const char* threads = std::getenv("DREAMLORA_THREADS");
  dreamlora::tune_allocator();
  dreamlora::configure_threads({threads ? std::atoi(threads) : 2, 1});
  const char* fixtures = std::getenv("DREAMLORA_FIXTURES");
  const auto dir = std::filesystem::path(fixtures ? fixtures : DREAMLORA_FIXTURES_DIR) / "tiny-sd" / "unet";
  auto unet = dreamlora::unet::UNet2DConditionModelImpl::load(dir);
  for (const auto& item : unet->named_modules())
    for (const char* target : {".to_q", ".to_k", ".to_v", ".to_out.0"})
      if (ends_with(item.key(), target))
        item.value()->as<dreamlora::nn::LinearWithLoraImpl>()->enable_lora({4, 4.0, 0.0});
  unet->train();
  torch::manual_seed(0);
  auto sample = torch::randn({1, 4, 32, 32}), timestep = torch::tensor({500}),
       context = torch::randn({1, 77, 32});
  auto target = torch::randn({1, 4, 32, 32});
  auto step = [&] {
    auto loss = torch::mse_loss(unet->forward(sample, timestep, context), target);
    loss.backward();
    unet->zero_grad();
  };
  step();
  step();
  constexpr int kSteps = 5;
  const auto t0 = std::chrono::steady_clock::now();
  {
    torch::autograd::profiler::RecordProfile guard(trace_path);
    for (int i = 0; i < kSteps; ++i) step();
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kSteps;
  std::ifstream in(trace_path);
  auto ops = self_times(nlohmann::json::parse(in));
  std::vector<std::pair<std::string, OpTime>> sorted(ops.begin(), ops.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  double all = 0;
  for (const auto& [name, t] : sorted) all += t.self_us;
  std::cout << "step " << std::fixed << std::setprecision(3) << wall << " s (profiled, " << kSteps
            << " steps); ops by self time per step:\n";
  for (size_t i = 0; i < std::min<size_t>(sorted.size(), 30); ++i) {
    const auto& [name, t] = sorted[i];
    std::cout << std::setw(8) << std::setprecision(1) << t.self_us / kSteps / 1000 << " ms " << std::setw(5)
              << std::setprecision(1) << 100 * t.self_us / all << " %  " << std::setw(5) << t.calls / kSteps
              << "x  " << name << "\n";
  }
  std::cout << "trace: " << trace_path << "\n";
  return 0;
}
