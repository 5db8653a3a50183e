// Helpers for the checkpoint tests: sample checkpoint contents, running code in a forked child, and
// reading a directory's entry names.
#pragma once

#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>

#include "dreamlora/checkpoint/checkpoint_store.h"

namespace dreamlora::checkpoint::testing {

// A checkpoint shaped like the trainer's: a LoRA tensor set, an optimizer blob, trainer_state.json.
// Contents depend on `step` so checkpoints of different steps differ.
inline CheckpointContents sample_contents(int64_t step, size_t optimizer_bytes = 256 * 1024) {
  CheckpointContents c;
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(step));
  c.add_tensors("pytorch_lora_weights.safetensors",
                {{"unet.down.lora.down.weight", torch::randn({4, 32}, gen)},
                 {"unet.down.lora.up.weight", torch::randn({32, 4}, gen)}},
                {{"format", "pt"}});
  std::string opt(optimizer_bytes, '\0');
  for (size_t i = 0; i < opt.size(); ++i) opt[i] = static_cast<char>((i * 131 + step) & 0xff);
  c.add_bytes("optimizer.safetensors", std::move(opt));
  c.add_bytes("trainer_state.json", "{\"global_step\": " + std::to_string(step) + "}\n");
  return c;
}

// Runs fn in a forked child that exits with fn's return value (or 98 on an exception); returns the raw
// wait status. The child never returns into the test framework.
inline int run_in_child(const std::function<int()>& fn) {
  std::cout.flush();
  std::cerr.flush();
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 98;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      std::cerr << "child: " << e.what() << std::endl;
    }
    ::_exit(rc);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

inline int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

inline std::set<std::string> entry_names(const std::filesystem::path& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

}  // namespace dreamlora::checkpoint::testing
