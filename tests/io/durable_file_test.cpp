// write_file_durably under injected faults (the path every final output takes: LoRA files, model card,
// training_config.json): a failure at any call leaves the previous file untouched and no temporary.
#include "dreamlora/io/durable_file.h"

#include <gtest/gtest.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::io {
namespace {

namespace fs = std::filesystem;

struct DurableFault {
  const char* name;
  const char* fault;
  const char* error_contains;
  bool new_content_visible;  // the fault is the parent-directory fsync after the rename
};

class DurableFileFault : public ::testing::TestWithParam<DurableFault> {
 protected:
  void TearDown() override { set_test_faults(""); }
};

TEST_P(DurableFileFault, PreviousFileStaysAndNoTemporaryIsLeft) {
  const DurableFault f = GetParam();
  auto dir = dreamlora::testing::make_temp_dir("durable-fault");
  const fs::path target = dir / "pytorch_lora_weights.safetensors";
  write_file_durably(target, "old");
  set_test_faults(f.fault);
  try {
    write_file_durably(target, std::string(100000, 'n'));
    ADD_FAILURE() << f.fault << " did not fail the write";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(f.error_contains), std::string::npos) << e.what();
  }
  set_test_faults("");
  EXPECT_EQ(read_file(target).size(), f.new_content_visible ? 100000u : 3u);
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ++entries;
    EXPECT_EQ(e.path(), target);
  }
  EXPECT_EQ(entries, 1u);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    EveryCall, DurableFileFault,
    ::testing::Values(DurableFault{"write_enospc", "write:ENOSPC:1", "write failed: No space left", false},
                      DurableFault{"file_fsync", "fsync:1", ".tmp-", false},
                      DurableFault{"rename", "rename:1", "rename from temp file failed", false},
                      DurableFault{"dir_fsync", "fsync:2", "fsync failed", true}),
    [](const ::testing::TestParamInfo<DurableFault>& info) { return std::string(info.param.name); });

TEST(DurableFileFaults, OnlyTheNthCallFailsAndTheCountRestartsWhenArmed) {
  auto dir = dreamlora::testing::make_temp_dir("durable-nth");
  set_test_faults("fsync:3");  // two fsyncs per durable write: the second write's file fsync fails
  EXPECT_NO_THROW(write_file_durably(dir / "a", "a"));
  EXPECT_THROW(write_file_durably(dir / "b", "b"), Error);
  EXPECT_NO_THROW(write_file_durably(dir / "c", "c"));
  set_test_faults("");
  EXPECT_NO_THROW(write_file_durably(dir / "b", "b"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::io
