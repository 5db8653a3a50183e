// The checkpoint part of `dreamlora inspect`: an output directory (its lock, every checkpoint-<N>, leftovers,
// which one a resume would pick) or one checkpoint directory (its files and whether it verifies).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace dreamlora::checkpoint {

struct InspectReport {
  std::vector<std::string> lines;
  int exit_status = 0;  // non-zero when a directly named checkpoint does not verify, or the path is unusable
};

// True for a directory holding MANIFEST.json or named checkpoint-<N>.
bool looks_like_checkpoint_dir(const std::filesystem::path& path);
InspectReport inspect_checkpoints(const std::filesystem::path& path);

}  // namespace dreamlora::checkpoint
