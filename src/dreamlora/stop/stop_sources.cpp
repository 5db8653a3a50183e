#include "dreamlora/stop/stop_sources.h"

#include "dreamlora/common/duration.h"

namespace dreamlora::stop {

StopSources::StopSources(const std::string& watch_preemption, const std::string& max_runtime) {
  install_stop_handlers();
  // A cloud's preemption notice behaves exactly like SIGTERM, so a preemption costs no steps.
  if (!watch_preemption.empty()) {
    auto options = remote::PreemptionWatcherOptions::parse(watch_preemption);
    options.on_notice = [](const std::string& reason) { request_stop(reason); };
    watcher_ = std::make_unique<remote::PreemptionWatcher>(options);
  }
  if (!max_runtime.empty()) deadline_ = Deadline(parse_duration(max_runtime));
}

bool StopSources::requested() const {
  return stop_requested() || deadline_.check();
}

}  // namespace dreamlora::stop
