// Shared test helpers: where the parity fixtures are, and comparisons that report the max abs error.
#pragma once

#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace dreamlora::testing {

// ../shared/fixtures (or $DREAMLORA_FIXTURES); empty path when absent.
std::filesystem::path fixtures_dir();
bool running_in_ci();
// A fresh empty directory under the system temp dir, removed by the caller or left for debugging.
std::filesystem::path make_temp_dir(const std::string& tag);
// Path of the built dreamlora binary (for tests that run the CLI in a child process).
std::filesystem::path dreamlora_binary();

struct ProcessResult {
  int exit_status = -1;  // exit code, or 128 + signal
  std::string output;    // stdout and stderr together
};
// Runs the dreamlora binary with args (and extra NAME=VALUE environment entries), waits for it.
ProcessResult run_dreamlora(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
// Starts it without waiting; returns the pid. Output goes to output_file.
int spawn_dreamlora(const std::vector<std::string>& args, const std::filesystem::path& output_file,
                    const std::vector<std::string>& env = {});
// Waits for pid; returns exit code or 128 + signal.
int wait_process(int pid);
std::string read_text(const std::filesystem::path& path);

// A loopback TCP port that was free a moment ago (bound, then closed): for a test server, or for a
// connection that must be refused.
int free_loopback_port();

// The message of the dreamlora::Error that fn throws; "" when it throws none.
std::string error_of(const std::function<void()>& fn);

// Max |a - b| (shapes must match).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace dreamlora::testing

// Skips the test when the fixtures folder is missing, except under CI=true where that is a failure.
#define REQUIRE_FIXTURES()                                                                 \
  do {                                                                                     \
    if (::dreamlora::testing::fixtures_dir().empty()) {                                    \
      if (::dreamlora::testing::running_in_ci())                                           \
        FAIL() << "fixtures folder ../shared/fixtures missing under CI";                   \
      GTEST_SKIP() << "fixtures folder ../shared/fixtures not found; parity test skipped"; \
    }                                                                                      \
  } while (0)

// EXPECT that two tensors agree within tol (max abs error), printing the error either way.
#define EXPECT_TENSOR_NEAR(actual, expected, tol)                                    \
  do {                                                                               \
    auto _a = (actual);                                                              \
    auto _e = (expected);                                                            \
    ASSERT_EQ(_a.sizes(), _e.sizes()) << #actual " vs " #expected;                   \
    double _err = ::dreamlora::testing::max_abs_diff(_a, _e);                        \
    std::cout << "[ parity ] " << #actual << " max abs error " << _err << std::endl; \
    EXPECT_LE(_err, (tol)) << #actual " vs " #expected;                              \
  } while (0)
