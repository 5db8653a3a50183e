// Graceful stop: signals set the flag (in forked children, so the test runner keeps its own handlers),
// a second SIGINT exits with 130, request_stop from another thread, the deadline and duration parsing.
#include "dreamlora/stop/stop_request.h"

#include <gtest/gtest.h>

#include <csignal>
#include <thread>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/common/duration.h"
#include "dreamlora/common/error.h"

namespace dreamlora::stop {
namespace {

using checkpoint::testing::exit_code;
using checkpoint::testing::run_in_child;

// In a child: install, raise `sig`, and exit 0 iff the flag and reason are right.
int child_raises(int sig, StopReason expected) {
  return exit_code(run_in_child([&] {
    reset_stop_for_tests();
    install_stop_handlers();
    if (stop_requested()) return 2;
    ::raise(sig);
    if (!stop_requested()) return 3;
    if (stop_reason() != expected) return 4;
    return 0;
  }));
}

TEST(Signals, SigtermSigintAndSigusr1RequestAGracefulStop) {
  EXPECT_EQ(child_raises(SIGTERM, StopReason::kSigterm), 0);
  EXPECT_EQ(child_raises(SIGINT, StopReason::kSigint), 0);
  EXPECT_EQ(child_raises(SIGUSR1, StopReason::kSigusr1), 0);
}

TEST(Signals, SecondSigintExitsAtOnceWith130) {
  int code = exit_code(run_in_child([] {
    install_stop_handlers();
    ::raise(SIGINT);
    if (!stop_requested()) return 3;
    ::raise(SIGINT);
    return 0;  // not reached when the second SIGINT exits
  }));
  EXPECT_EQ(code, kExitInterrupted);
}

TEST(Signals, RepeatedSigtermKeepsWaitingForTheCheckpoint) {
  int code = exit_code(run_in_child([] {
    install_stop_handlers();
    ::raise(SIGTERM);
    ::raise(SIGTERM);
    return stop_reason() == StopReason::kSigterm ? 0 : 4;
  }));
  EXPECT_EQ(code, 0);
}

TEST(Signals, SigtermFromAnotherProcessReachesTheLoop) {
  // The shape of the trainer's loop: poll the flag once per step, then exit with kExitStoppedEarly.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::cout.flush();
  pid_t pid = ::fork();
  if (pid == 0) {
    install_stop_handlers();
    char ready = 'r';
    if (::write(fds[1], &ready, 1) != 1) ::_exit(5);
    for (int step = 0; step < 100000; ++step) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (stop_requested()) ::_exit(kExitStoppedEarly);
    }
    ::_exit(0);
  }
  char ready = 0;
  ASSERT_EQ(::read(fds[0], &ready, 1), 1);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(exit_code(status), kExitStoppedEarly);
}

TEST(Signals, UninstallRestoresThePreviousHandlers) {
  int code = exit_code(run_in_child([] {
    ::signal(SIGUSR1, SIG_IGN);
    install_stop_handlers();
    uninstall_stop_handlers();
    ::raise(SIGUSR1);  // ignored again, so no stop
    return stop_requested() ? 3 : 0;
  }));
  EXPECT_EQ(code, 0);
}

TEST(Signals, RequestStopFromAnotherThreadCarriesItsReasonAndFirstReasonWins) {
  reset_stop_for_tests();
  EXPECT_FALSE(stop_requested());
  std::thread watcher([] { request_stop("spot instance preemption notice"); });
  watcher.join();
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_reason(), StopReason::kRequested);
  EXPECT_EQ(stop_reason_text(), "spot instance preemption notice");
  request_stop(StopReason::kMaxRuntime);
  EXPECT_EQ(stop_reason_text(), "spot instance preemption notice");
  reset_stop_for_tests();
  EXPECT_FALSE(stop_requested());
}

TEST(Signals, ExitStatusesAreTheDocumentedOnes) {
  EXPECT_EQ(kExitFinished, 0);
  EXPECT_EQ(kExitError, 1);
  EXPECT_EQ(kExitStoppedEarly, 75);  // EX_TEMPFAIL
  EXPECT_EQ(kExitInterrupted, 128 + SIGINT);
}

TEST(Deadline, ExpiredDeadlineRequestsAStopForMaxRuntime) {
  reset_stop_for_tests();
  Deadline never;
  EXPECT_FALSE(never.check());
  EXPECT_FALSE(never.enabled());
  Deadline later(std::chrono::seconds(3600));
  EXPECT_FALSE(later.check());
  EXPECT_GT(later.remaining_seconds(), 3500);
  Deadline now(std::chrono::seconds(0));
  EXPECT_TRUE(now.check());
  EXPECT_EQ(stop_reason(), StopReason::kMaxRuntime);
  EXPECT_EQ(stop_reason_text(), "max-runtime");
  reset_stop_for_tests();
}

TEST(Duration, ParsesUnitsAndCombinations) {
  using std::chrono::seconds;
  EXPECT_EQ(parse_duration("90s"), seconds(90));
  EXPECT_EQ(parse_duration("30m"), seconds(1800));
  EXPECT_EQ(parse_duration("2h"), seconds(7200));
  EXPECT_EQ(parse_duration("1h30m"), seconds(5400));
  EXPECT_EQ(parse_duration("1d2h3m4s"), seconds(86400 + 7200 + 180 + 4));
  EXPECT_EQ(parse_duration("1.5h"), seconds(5400));
  EXPECT_EQ(parse_duration("45"), seconds(45));
}

TEST(Duration, RejectsMalformedValuesNamingTheFlag) {
  for (const char* bad : {"", "abc", "10x", "1h30", "-5m", "0s", "h", "1..5h", "1h 30m", "nan"}) {
    try {
      parse_duration(bad, "--max-runtime");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--max-runtime"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace dreamlora::stop
