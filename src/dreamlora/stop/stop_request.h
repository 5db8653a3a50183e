// Graceful stop: SIGTERM / SIGINT / SIGUSR1 set a process-wide stop flag (the trainer finishes the step
// in flight, writes a checkpoint and exits with kExitStoppedEarly); a second SIGINT exits at once.
// Also the --max-runtime deadline and request_stop() for other threads (e.g. a preemption watcher).
#pragma once

#include <chrono>
#include <string>

namespace dreamlora::stop {

// Exit statuses of `dreamlora train`.
constexpr int kExitFinished = 0;       // reached --num-steps and finalised
constexpr int kExitError = 1;          // any error
constexpr int kExitStoppedEarly = 75;  // EX_TEMPFAIL: stopped by a signal / --max-runtime / request_stop
                                       // after writing a checkpoint; `until dreamlora train ...; do
                                       // sleep 1; done` resumes it
constexpr int kExitInterrupted = 130;  // second SIGINT: exited at once, no checkpoint (128 + SIGINT)

enum class StopReason { kNone = 0, kSigterm, kSigint, kSigusr1, kMaxRuntime, kRequested };
const char* stop_reason_name(StopReason r);  // "SIGTERM", "max-runtime", ...

// Installs the handlers (idempotent). Handlers only touch a lock-free atomic and write(2).
void install_stop_handlers();
// Restores the handlers that were in place before install_stop_handlers().
void uninstall_stop_handlers();

bool stop_requested();
StopReason stop_reason();
// "SIGTERM", or for request_stop the caller's text ("spot instance preemption notice").
std::string stop_reason_text();
// From any thread (not from a signal handler). The first reason wins.
void request_stop(const std::string& reason);
void request_stop(StopReason reason);
void reset_stop_for_tests();

// --max-runtime: started at construction; check() requests a stop (kMaxRuntime) once expired.
class Deadline {
 public:
  Deadline() = default;  // never expires
  explicit Deadline(std::chrono::seconds budget);
  bool enabled() const { return enabled_; }
  bool expired() const;
  double remaining_seconds() const;  // +inf when disabled
  // Call once per step: true (and stop requested) when expired.
  bool check() const;

 private:
  bool enabled_ = false;
  std::chrono::steady_clock::time_point end_{};
};

}  // namespace dreamlora::stop
