// The command line as users type it: global flags after the subcommand, the last of a repeated flag
// wins, usage errors exit 2 with a one-line hint, --help exits 0.
#include <gtest/gtest.h>

#include "test_util.h"

using namespace dreamlora::testing;

namespace {

std::vector<std::string> train_without_data(std::vector<std::string> extra) {
  std::vector<std::string> args = {
      "train",    "--model",           "/nonexistent/model", "--image-path", "/nonexistent/images",
      "--prompt", "a photo of sks dog"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

TEST(CliCommandLine, ThreadsAndBlasThreadsAreAcceptedAfterTheSubcommand) {
  auto dir = make_temp_dir("cli-threads");
  auto r = run_dreamlora({"inspect", dir.string(), "--threads", "2", "--blas-threads", "1"});
  EXPECT_EQ(r.exit_status, 0) << r.output;
  EXPECT_NE(r.output.find("output directory"), std::string::npos) << r.output;
}

TEST(CliCommandLine, AFlagGivenTwiceTakesItsLastValue) {
  // The last --num-steps (0) is the one validated: proof that it won over the first (4).
  auto r = run_dreamlora(train_without_data({"--num-steps", "4", "--num-steps", "0"}));
  EXPECT_EQ(r.exit_status, 1) << r.output;
  EXPECT_NE(r.output.find("--num-steps must be at least 1, got 0"), std::string::npos) << r.output;
  auto global =
      run_dreamlora({"--threads", "1", "inspect", make_temp_dir("cli-twice").string(), "--threads", "2"});
  EXPECT_EQ(global.exit_status, 0) << global.output;
}

TEST(CliCommandLine, AUsageErrorExitsWithStatus2AndAOneLineHint) {
  auto r = run_dreamlora(train_without_data({"--no-such-flag", "1"}));
  EXPECT_EQ(r.exit_status, 2) << r.output;
  EXPECT_NE(r.output.find("--no-such-flag"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("hint: `dreamlora train --help` lists the flags"), std::string::npos) << r.output;
  auto missing_value = run_dreamlora({"train", "--num-steps"});
  EXPECT_EQ(missing_value.exit_status, 2) << missing_value.output;
  auto no_subcommand = run_dreamlora({});
  EXPECT_EQ(no_subcommand.exit_status, 2) << no_subcommand.output;
  EXPECT_NE(no_subcommand.output.find("hint: `dreamlora --help`"), std::string::npos) << no_subcommand.output;
}

TEST(CliCommandLine, HelpStillExitsZero) {
  auto r = run_dreamlora({"train", "--help"});
  EXPECT_EQ(r.exit_status, 0) << r.output;
  EXPECT_NE(r.output.find("--num-steps"), std::string::npos);
  EXPECT_EQ(run_dreamlora({"--version"}).exit_status, 0);
}
