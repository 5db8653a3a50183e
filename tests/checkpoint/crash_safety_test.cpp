// Crash safety of the commit protocol: a child process dies at each phase of a commit (or prune), or is
// SIGKILLed at random moments while committing in a loop; afterwards earlier checkpoints verify, no
// partial checkpoint passes for a good one, and the next start's clean-up leaves no temporaries.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <random>
#include <thread>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::entry_names;
using testing::exit_code;
using testing::run_in_child;
using testing::sample_contents;

struct CrashCase {
  CrashPoint point;
  bool via_env;         // DREAMLORA_TEST_CRASH_AT instead of the static hook
  bool new_is_durable;  // the crash happens after the rename
};

class CrashAtPhase : public ::testing::TestWithParam<CrashCase> {};

TEST_P(CrashAtPhase, EarlierCheckpointsSurviveAndNoPartialOneIsTakenForGood) {
  const CrashCase c = GetParam();
  auto dir = dreamlora::testing::make_temp_dir(std::string("ckpt-crash-") + crash_point_name(c.point));
  CheckpointStore store(dir);
  store.commit(100, sample_contents(100));
  store.commit(200, sample_contents(200));

  int status = run_in_child([&] {
    if (c.via_env)
      ::setenv("DREAMLORA_TEST_CRASH_AT", crash_point_name(c.point), 1);
    else
      test_hooks::set_crash_at(c.point);
    CheckpointStore child_store(dir);
    child_store.commit(300, sample_contents(300, 2 << 20));
    child_store.prune(1);
    return 0;  // reaching here means the hook did not fire
  });
  ASSERT_EQ(exit_code(status), 99) << "crash hook " << crash_point_name(c.point) << " did not fire";

  // Whatever the phase, every checkpoint-<N> directory present is complete.
  for (const auto& info : store.list()) EXPECT_TRUE(info.valid) << info.path << ": " << info.reason;
  LatestResult latest = store.latest_valid();
  ASSERT_TRUE(latest.latest);
  EXPECT_TRUE(latest.skipped.empty());
  EXPECT_EQ(latest.latest->step, c.new_is_durable ? 300 : 200);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-200").ok);
  if (c.point != CrashPoint::kPruneRenamed) EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);

  // The next start removes the crashed process's leftovers and nothing else.
  auto removed = store.cleanup_temporaries();
  for (const auto& name : entry_names(dir))
    EXPECT_EQ(name.rfind("checkpoint-", 0), 0u) << "leftover " << name;
  const bool left_temp = c.point != CrashPoint::kRenamed && c.point != CrashPoint::kCommitted;
  EXPECT_EQ(removed.size(), left_temp ? 1u : 0u);
  // And a retry of the interrupted step succeeds.
  store.commit(300, sample_contents(300));
  EXPECT_EQ(store.latest_valid().latest->step, 300);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(EveryPhase, CrashAtPhase,
                         ::testing::Values(CrashCase{CrashPoint::kTempCreated, false, false},
                                           CrashCase{CrashPoint::kMidFile, false, false},
                                           CrashCase{CrashPoint::kFilesWritten, true, false},
                                           CrashCase{CrashPoint::kManifestWritten, false, false},
                                           CrashCase{CrashPoint::kRenamed, true, true},
                                           CrashCase{CrashPoint::kCommitted, false, true},
                                           CrashCase{CrashPoint::kPruneRenamed, false, true}),
                         [](const ::testing::TestParamInfo<CrashCase>& info) {
                           return std::string(crash_point_name(info.param.point));
                         });

TEST(CrashSafety, CrashPointNamesRoundTrip) {
  for (auto p : {CrashPoint::kTempCreated, CrashPoint::kMidFile, CrashPoint::kFilesWritten,
                 CrashPoint::kManifestWritten, CrashPoint::kRenamed, CrashPoint::kCommitted,
                 CrashPoint::kPruneRenamed})
    EXPECT_EQ(parse_crash_point(crash_point_name(p)), p);
  EXPECT_THROW(parse_crash_point("never"), Error);
}

TEST(CrashSafety, SigkillAtRandomMomentsNeverLeavesAnInvalidCheckpoint) {
  auto dir = dreamlora::testing::make_temp_dir("ckpt-sigkill");
  std::mt19937 rng(1234);
  int64_t next_step = 1;
  for (int round = 0; round < 6; ++round) {
    std::cout.flush();
    pid_t pid = ::fork();
    if (pid == 0) {
      CheckpointStore s(dir);
      s.cleanup_temporaries();
      for (int64_t step = next_step;; ++step) {
        s.commit(step, sample_contents(step, 512 * 1024));
        s.prune(2);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 150)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    CheckpointStore store(dir);
    for (const auto& info : store.list()) EXPECT_TRUE(info.valid) << "round " << round << ": " << info.reason;
    auto latest = store.latest_valid();
    if (latest.latest) next_step = latest.latest->step + 1;
    store.cleanup_temporaries();
    for (const auto& name : entry_names(dir))
      EXPECT_EQ(name.rfind("checkpoint-", 0), 0u) << "leftover " << name;
  }
  std::cout << "[ sigkill ] 6 kills; latest valid step afterwards " << next_step - 1 << std::endl;
  EXPECT_GT(next_step, 1) << "no checkpoint was ever committed";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::checkpoint
