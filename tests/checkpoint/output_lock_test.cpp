// The output-folder lock: one holder at a time, the holder named, no stale lock after SIGKILL, and
// `inspect` telling whether a folder is locked.
#include "dreamlora/checkpoint/output_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dreamlora/checkpoint/inspect.h"
#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string second_acquire_error(const fs::path& dir) {
  try {
    OutputLock::acquire(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string inspect_text(const fs::path& dir) {
  std::string s;
  for (const auto& l : inspect_checkpoints(dir).lines) s += l + "\n";
  return s;
}

TEST(OutputLock, ASecondHolderIsRefusedWithThePidHostAndStartTimeOfTheFirst) {
  auto dir = dreamlora::testing::make_temp_dir("lock-twice") / "out";
  auto first = OutputLock::acquire(dir);
  const std::string error = second_acquire_error(dir);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  EXPECT_NE(error.find("in use by another trainer"), std::string::npos) << error;
  EXPECT_NE(error.find("pid " + std::to_string(getpid()) + " on " + host + " since 20"), std::string::npos)
      << error;
  auto holder = lock_holder(dir);
  ASSERT_TRUE(holder.has_value());
  EXPECT_EQ(holder->pid, getpid());
  EXPECT_NE(inspect_text(dir).find("locked by a running trainer: pid " + std::to_string(getpid())),
            std::string::npos)
      << inspect_text(dir);
}

TEST(OutputLock, IsFreeAgainWhenTheHolderLetsGo) {
  auto dir = dreamlora::testing::make_temp_dir("lock-release");
  {
    auto lock = OutputLock::acquire(dir);
  }
  EXPECT_FALSE(lock_holder(dir).has_value());
  EXPECT_NE(inspect_text(dir).find("not locked"), std::string::npos) << inspect_text(dir);
  EXPECT_NO_THROW(OutputLock::acquire(dir));
}

TEST(OutputLock, ASigkilledHolderLeavesNoStaleLock) {
  auto dir = dreamlora::testing::make_temp_dir("lock-sigkill");
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto lock = OutputLock::acquire(dir);
    (void)!write(ready[1], "x", 1);
    for (;;) pause();
  }
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  auto holder = lock_holder(dir);
  ASSERT_TRUE(holder.has_value());
  EXPECT_EQ(holder->pid, child);
  EXPECT_NE(second_acquire_error(dir).find("pid " + std::to_string(child)), std::string::npos);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_FALSE(lock_holder(dir).has_value());
  EXPECT_NO_THROW(OutputLock::acquire(dir));
  close(ready[0]);
  close(ready[1]);
}

}  // namespace
}  // namespace dreamlora::checkpoint
