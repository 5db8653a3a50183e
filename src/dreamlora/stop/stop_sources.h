// Every reason for `dreamlora train` to stop early, as one source the trainer asks once per step:
// SIGTERM / SIGINT / SIGUSR1 (stop_request.h), a cloud's preemption notice (--watch-preemption, polled
// by remote::PreemptionWatcher) and the --max-runtime deadline. All of them end in request_stop(), so
// stop_reason_text() names whichever came first.
#pragma once

#include <memory>
#include <string>

#include "dreamlora/remote/preemption_watcher.h"
#include "dreamlora/stop/stop_request.h"

namespace dreamlora::stop {

class StopSources {
 public:
  // Installs the signal handlers; starts the watcher when watch_preemption is not empty ("aws", "gcp",
  // "azure" or a URL) and the deadline when max_runtime is not empty (parse_duration's syntax).
  StopSources(const std::string& watch_preemption, const std::string& max_runtime);

  // True once any source asked for a stop (an expired deadline asks here).
  bool requested() const;

 private:
  std::unique_ptr<remote::PreemptionWatcher> watcher_;
  Deadline deadline_;
};

}  // namespace dreamlora::stop
