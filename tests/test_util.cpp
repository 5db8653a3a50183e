#include "test_util.h"

#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <unistd.h>

namespace dreamlora::testing {

std::filesystem::path fixtures_dir() {
  std::filesystem::path dir;
  if (const char* env = std::getenv("DREAMLORA_FIXTURES")) dir = env;
  else dir = DREAMLORA_FIXTURES_DIR;
  if (std::filesystem::exists(dir / "tiny-sd" / "model_index.json")) return std::filesystem::canonical(dir);
  return {};
}

bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

std::filesystem::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("dreamlora-test-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::filesystem::path dreamlora_binary() {
  if (const char* env = std::getenv("DREAMLORA_BIN")) {
    if (std::filesystem::exists(env)) return env;
  }
  return std::filesystem::path(DREAMLORA_BINARY_DIR) / "dreamlora";
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace dreamlora::testing
