// `dreamlora inspect` listing: output directories and single checkpoints, valid and not.
#include "dreamlora/checkpoint/inspect.h"

#include <gtest/gtest.h>

#include "checkpoint/checkpoint_test_helpers.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string joined(const InspectReport& r) {
  std::string s;
  for (const auto& l : r.lines) s += l + "\n";
  return s;
}

TEST(Inspect, OutputDirListsEveryCheckpointLeftoversAndTheResumePoint) {
  auto dir = dreamlora::testing::make_temp_dir("ckpt-inspect");
  CheckpointStore store(dir);
  store.commit(100, testing::sample_contents(100, 1024));
  store.commit(200, testing::sample_contents(200, 1024));
  testing::write_text(dir / "checkpoint-200" / "trainer_state.json", "{}");
  fs::create_directories(dir / ".checkpoint-300.tmp-1");
  InspectReport r = inspect_checkpoints(dir);
  const std::string text = joined(r);
  std::cout << text;
  EXPECT_EQ(r.exit_status, 0);
  EXPECT_NE(text.find("checkpoint-100  step 100"), std::string::npos);
  EXPECT_NE(text.find("valid"), std::string::npos);
  EXPECT_NE(text.find("checkpoint-200  step 200"), std::string::npos);
  EXPECT_NE(text.find("INVALID: trainer_state.json: size"), std::string::npos);
  EXPECT_NE(text.find("leftover .checkpoint-300.tmp-1"), std::string::npos);
  EXPECT_NE(text.find("latest valid: checkpoint-100"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Inspect, NamedCheckpointShowsFilesAndFailsWhenInvalid) {
  auto dir = dreamlora::testing::make_temp_dir("ckpt-inspect-one");
  CheckpointStore store(dir);
  store.commit(5, testing::sample_contents(5, 1024));
  InspectReport ok = inspect_checkpoints(dir / "checkpoint-5");
  EXPECT_EQ(ok.exit_status, 0) << joined(ok);
  EXPECT_NE(joined(ok).find("file optimizer.safetensors  1.0 KiB  xxh3_64 "), std::string::npos)
      << joined(ok);
  EXPECT_NE(joined(ok).find("step 5"), std::string::npos);

  testing::write_text(dir / "checkpoint-5" / "optimizer.safetensors", std::string(1024, 'z'));
  InspectReport bad = inspect_checkpoints(dir / "checkpoint-5/");
  std::cout << joined(bad);
  EXPECT_NE(bad.exit_status, 0);
  EXPECT_NE(joined(bad).find("INVALID: optimizer.safetensors: checksum"), std::string::npos) << joined(bad);

  fs::remove(dir / "checkpoint-5" / "MANIFEST.json");
  InspectReport missing = inspect_checkpoints(dir / "checkpoint-5");
  EXPECT_NE(missing.exit_status, 0);
  EXPECT_NE(joined(missing).find("MANIFEST.json missing"), std::string::npos);

  EXPECT_NE(inspect_checkpoints(dir / "nope").exit_status, 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::checkpoint
