#include "dreamlora/train/optional_steps.h"

#include <c10/util/Exception.h>

#include "dreamlora/common/error.h"
#include "dreamlora/train/train_log.h"

namespace dreamlora::train {

void OptionalSteps::run(const std::string& what, const std::function<void()>& step) {
  try {
    step();
  } catch (const c10::Error& e) {
    warn(str(what, " failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    warn(str(what, " failed: ", e.what()));
  }
}

void OptionalSteps::warn(const std::string& warning) {
  warnings_.push_back(warning);
  train_log("warning: " + warning);
}

void OptionalSteps::print_summary(const std::filesystem::path& out) const {
  if (warnings_.empty()) return;
  train_log(str("finished with ", warnings_.size(), " warning", warnings_.size() == 1 ? "" : "s",
                " (the final LoRA files are complete in ", out.string(), "):"));
  for (const auto& w : warnings_) train_log("  warning: " + w);
}

}  // namespace dreamlora::train
