// Stop flag, signal handlers, duration parsing and the --max-runtime deadline.
#include "dreamlora/stop/stop_request.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "dreamlora/common/error.h"

namespace dreamlora::stop {

namespace {

static_assert(std::atomic<int>::is_always_lock_free, "signal handlers need a lock-free atomic");
std::atomic<int> g_reason{0};
std::atomic<int> g_sigint_count{0};
std::mutex g_text_mu;
std::string g_text;  // request_stop(text); written only outside signal handlers

bool g_installed = false;
struct sigaction g_old_term, g_old_int, g_old_usr1;

void say(const char* message) {
  ssize_t rc = ::write(STDERR_FILENO, message, std::strlen(message));
  (void)rc;
}

bool set_reason(StopReason r) {
  int expected = 0;
  return g_reason.compare_exchange_strong(expected, static_cast<int>(r));
}

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;
  if (sig == SIGINT && g_sigint_count.fetch_add(1) >= 1) {
    say("\ndreamlora: second SIGINT, exiting now without a checkpoint\n");
    ::_exit(kExitInterrupted);
  }
  StopReason r = sig == SIGTERM  ? StopReason::kSigterm
                 : sig == SIGINT ? StopReason::kSigint
                                 : StopReason::kSigusr1;
  if (set_reason(r))
    say(sig == SIGINT ? "\ndreamlora: SIGINT, finishing this step and writing a checkpoint (Ctrl-C again "
                        "exits at once)\n"
                      : "\ndreamlora: stop signal, finishing this step and writing a checkpoint\n");
  errno = saved_errno;
}

}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kNone:
      return "none";
    case StopReason::kSigterm:
      return "SIGTERM";
    case StopReason::kSigint:
      return "SIGINT";
    case StopReason::kSigusr1:
      return "SIGUSR1";
    case StopReason::kMaxRuntime:
      return "max-runtime";
    case StopReason::kRequested:
      return "requested";
  }
  return "?";
}

void install_stop_handlers() {
  if (g_installed) return;
  struct sigaction sa{};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads in the data loader keep going; the flag is polled per step
  DL_CHECK(::sigaction(SIGTERM, &sa, &g_old_term) == 0 && ::sigaction(SIGINT, &sa, &g_old_int) == 0 &&
               ::sigaction(SIGUSR1, &sa, &g_old_usr1) == 0,
           "cannot install signal handlers: ", std::strerror(errno));
  g_installed = true;
}

void uninstall_stop_handlers() {
  if (!g_installed) return;
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGUSR1, &g_old_usr1, nullptr);
  g_installed = false;
}

bool stop_requested() {
  return g_reason.load() != 0;
}
StopReason stop_reason() {
  return static_cast<StopReason>(g_reason.load());
}

std::string stop_reason_text() {
  StopReason r = stop_reason();
  if (r == StopReason::kRequested) {
    std::lock_guard<std::mutex> lock(g_text_mu);
    return g_text;
  }
  return stop_reason_name(r);
}

void request_stop(const std::string& reason) {
  std::lock_guard<std::mutex> lock(g_text_mu);
  if (set_reason(StopReason::kRequested)) g_text = reason.empty() ? "requested" : reason;
}

void request_stop(StopReason reason) {
  if (reason == StopReason::kRequested) return request_stop(std::string("requested"));
  if (reason != StopReason::kNone) set_reason(reason);
}

void reset_stop_for_tests() {
  std::lock_guard<std::mutex> lock(g_text_mu);
  g_reason = 0;
  g_sigint_count = 0;
  g_text.clear();
}

Deadline::Deadline(std::chrono::seconds budget)
    : enabled_(true), end_(std::chrono::steady_clock::now() + budget) {}

bool Deadline::expired() const {
  return enabled_ && std::chrono::steady_clock::now() >= end_;
}

double Deadline::remaining_seconds() const {
  if (!enabled_) return std::numeric_limits<double>::infinity();
  return std::chrono::duration<double>(end_ - std::chrono::steady_clock::now()).count();
}

bool Deadline::check() const {
  if (!expired()) return false;
  request_stop(StopReason::kMaxRuntime);
  return true;
}

}  // namespace dreamlora::stop
