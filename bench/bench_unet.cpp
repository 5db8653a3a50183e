// UNet2DConditionModel on the tiny-sd fixture at latent 4x32x32, batch 1, 77 text tokens: forward
// only, and forward+backward of a training step (LoRA rank 4 on to_q/to_k/to_v/to_out.0, base frozen,
// MSE loss), with and without gradient checkpointing; plus one 1024-token self-attention (8 heads of 4)
// forward+backward, the op that dominates. Reports median wall time, CPU time and peak RSS.
// Threads: $DREAMLORA_THREADS (default 2, the product target's core count).
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "dreamlora/common/threads.h"
#include "dreamlora/nn/attention.h"
#include "dreamlora/unet/unet_2d_condition.h"

namespace {

using dreamlora::unet::UNet2DConditionModel;
using dreamlora::unet::UNet2DConditionModelImpl;

std::filesystem::path unet_dir() {
  const char* env = std::getenv("DREAMLORA_FIXTURES");
  std::filesystem::path root = env ? env : DREAMLORA_FIXTURES_DIR;
  return root / "tiny-sd" / "unet";
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is KiB on Linux
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

UNet2DConditionModel load_with_lora() {
  auto unet = UNet2DConditionModelImpl::load(unet_dir());
  for (const auto& item : unet->named_modules()) {
    for (const char* target : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
      if (!ends_with(item.key(), target)) continue;
      auto* linear = item.value()->as<dreamlora::nn::LinearWithLoraImpl>();
      linear->enable_lora({4, 4.0, 0.0});
      torch::NoGradGuard no_grad;
      linear->lora->up->weight.normal_(0, 0.1);  // a trained-looking adapter, not the zero init
    }
  }
  unet->train();
  return unet;
}

struct Inputs {
  torch::Tensor sample, timestep, context, target;
};

Inputs make_inputs() {
  torch::manual_seed(0);
  return {torch::randn({1, 4, 32, 32}), torch::tensor({500}), torch::randn({1, 77, 32}),
          torch::randn({1, 4, 32, 32})};
}

void finish(benchmark::State& state) {
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}

void BM_UNetForward(benchmark::State& state) {
  auto unet = UNet2DConditionModelImpl::load(unet_dir());
  auto in = make_inputs();
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(unet->forward(in.sample, in.timestep, in.context));
  finish(state);
}

void train_step(benchmark::State& state, bool checkpointing) {
  auto unet = load_with_lora();
  unet->set_gradient_checkpointing(checkpointing);
  auto in = make_inputs();
  for (auto _ : state) {
    auto loss = torch::mse_loss(unet->forward(in.sample, in.timestep, in.context), in.target);
    loss.backward();
    unet->zero_grad();
  }
  finish(state);
}

void BM_UNetForwardBackwardLoRA(benchmark::State& state) {
  train_step(state, false);
}
void BM_UNetForwardBackwardLoRACheckpointed(benchmark::State& state) {
  train_step(state, true);
}

void BM_SelfAttention1024TokensForwardBackward(benchmark::State& state) {
  torch::manual_seed(0);
  auto q = torch::randn({1, 8, 1024, 4}).requires_grad_(true);
  auto k = torch::randn({1, 8, 1024, 4}).requires_grad_(true);
  auto v = torch::randn({1, 8, 1024, 4}).requires_grad_(true);
  for (auto _ : state) {
    dreamlora::nn::attention(q, k, v).sum().backward();
  }
  finish(state);
}

void configure(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0)->Repetitions(5)->ReportAggregatesOnly(true);
}

BENCHMARK(BM_UNetForward)->Apply(configure);
BENCHMARK(BM_UNetForwardBackwardLoRA)->Apply(configure);
BENCHMARK(BM_UNetForwardBackwardLoRACheckpointed)->Apply(configure);
BENCHMARK(BM_SelfAttention1024TokensForwardBackward)->Apply(configure);

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("DREAMLORA_THREADS");
  dreamlora::ThreadSettings threads;
  threads.torch_threads = env ? std::atoi(env) : 2;
  dreamlora::configure_threads(threads);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
