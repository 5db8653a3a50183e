// One self-attention forward+backward at the tiny-sd 32x32 latent shape [1, 8, 1024, 4]: the old
// bmm -> softmax -> bmm path vs nn::fused_attention vs at::scaled_dot_product_attention (libtorch >= 2). Each
// variant runs in its own forked process so peak RSS is its own; prints median wall and CPU time per
// iteration, peak RSS and the load average. Usage: bench_attention [iterations] [threads]   (defaults 20, 2;
// shape via $ATTN_SHAPE="B,H,L,D")
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "dreamlora/nn/fused_attention.h"

namespace {

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// The path nn::attention takes on libtorch 1.13 before the fused kernel: autograd keeps [B*h, L, L].
torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto b = q.size(0), h = q.size(1), l = q.size(2), d = q.size(3);
  auto q3 = q.reshape({b * h, l, d}), k3 = k.reshape({b * h, k.size(2), d}),
       v3 = v.reshape({b * h, k.size(2), d});
  auto scores = torch::bmm(q3 * (1.0 / std::sqrt(static_cast<double>(d))), k3.transpose(1, 2));  // [N, L, L]
  return torch::bmm(torch::softmax(scores, -1), v3).view({b, h, l, d});
}

torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v);
#else
  return reference_attention(q, k, v);  // not reached: the variant is skipped before 2.0
#endif
}

void run_variant(const std::string& name, int iterations, const std::vector<int64_t>& shape) {
  torch::manual_seed(0);
  auto q = torch::randn(shape).requires_grad_(true);
  auto k = torch::randn(shape).requires_grad_(true);
  auto v = torch::randn(shape).requires_grad_(true);
  auto grad = torch::randn(shape);
  const double rss_before = peak_rss_mib();
  auto step = [&] {
    auto out = name == "old"    ? reference_attention(q, k, v)
               : name == "sdpa" ? sdpa(q, k, v)
                                : dreamlora::nn::fused_attention(q, k, v, false);
    out.backward(grad);
    q.mutable_grad().reset();
    k.mutable_grad().reset();
    v.mutable_grad().reset();
  };
  for (int i = 0; i < 3; ++i) step();
  std::vector<double> wall, cpu;
  for (int i = 0; i < iterations; ++i) {
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    step();
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    cpu.push_back(cpu_seconds() - c0);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  std::printf(
      "{\"variant\": \"%s\", \"threads\": %d, \"iterations\": %d, \"median_wall_ms\": %.3f, "
      "\"min_wall_ms\": %.3f, \"median_cpu_ms\": %.3f, \"peak_rss_mib\": %.1f, "
      "\"peak_rss_growth_mib\": %.1f, \"loadavg\": \"%s\"}\n",
      name.c_str(), at::get_num_threads(), iterations, 1e3 * wall[wall.size() / 2], 1e3 * wall[0],
      1e3 * cpu[cpu.size() / 2], peak_rss_mib(), peak_rss_mib() - rss_before, loadavg().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 20;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  std::vector<int64_t> shape{1, 8, 1024, 4};
  if (const char* env = std::getenv("ATTN_SHAPE"))
    std::sscanf(env, "%ld,%ld,%ld,%ld", &shape[0], &shape[1], &shape[2], &shape[3]);
  // Fork before any torch work so each child starts with a fresh thread pool and its own peak RSS.
  std::vector<std::string> variants{"old", "new"};
  if (TORCH_VERSION_MAJOR >= 2) variants.push_back("sdpa");
  for (const std::string& name : variants) {
    const pid_t pid = fork();
    if (pid == 0) {
      at::set_num_threads(threads);
      run_variant(name, iterations, shape);
      std::_Exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "variant %s failed (status %d)\n", name.c_str(), status);
      return 1;
    }
  }
  return 0;
}
