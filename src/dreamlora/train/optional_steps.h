// Steps the result does not depend on (validation images, model card, loss curve, uploads of the final
// outputs): a failure is logged as a warning at once and repeated in the summary at the end of the run.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace dreamlora::train {

class OptionalSteps {
 public:
  // Runs step; an exception it throws becomes the warning "<what> failed: <message>".
  void run(const std::string& what, const std::function<void()>& step);
  void warn(const std::string& warning);
  // "finished with N warnings (the final LoRA files are complete in <out>):" and each warning; nothing
  // when there were none.
  void print_summary(const std::filesystem::path& out) const;

 private:
  std::vector<std::string> warnings_;
};

}  // namespace dreamlora::train
