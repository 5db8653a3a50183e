// A real full disk: a 600 KB tmpfs as the output directory (mounted by the test; we are root in CI).
// The checkpoint that does not fit gives a warning with the free and needed bytes and a clean error,
// every earlier checkpoint stays valid, a resume takes the newest one, and a final output that does not
// fit fails the same way without touching what was there.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cstring>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/checkpoint/background_writer.h"
#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/io/durable_file.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::entry_names;
using testing::sample_contents;

class SmallTmpfs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = dreamlora::testing::make_temp_dir("ckpt-tmpfs");
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=600k") != 0)
      GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                   << "; needs root): the injected ENOSPC rows of fault_matrix_test cover the code path";
    mounted = true;
  }
  void TearDown() override {
    if (mounted) ::umount(dir.c_str());
    fs::remove_all(dir);
  }
  fs::path dir;
  bool mounted = false;
};

TEST_F(SmallTmpfs, CheckpointThatDoesNotFitWarnsFailsCleanlyAndKeepsEarlierOnes) {
  CheckpointStore store(dir);
  std::vector<std::string> warnings;
  store.set_warning_handler([&](const std::string& m) { warnings.push_back(m); });
  WriterOptions options;
  options.total_limit = 5;
  options.on_error = ErrorPolicy::kContinue;
  options.synchronous = true;
  CheckpointWriter writer(store, options);
  writer.submit(100, sample_contents(100, 200 * 1024));
  writer.submit(200, sample_contents(200, 200 * 1024));
  ASSERT_EQ(writer.last_committed_step(), 200) << "two 200 KB checkpoints should fit in 600 KB";

  writer.submit(300, sample_contents(300, 200 * 1024));
  auto s = writer.last();
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->ok);
  EXPECT_NE(s->error.find("No space left on device"), std::string::npos) << s->error;
  EXPECT_NE(s->error.find("free disk space"), std::string::npos) << s->error;
  bool warned = false;
  for (const auto& w : s->warnings) warned |= w.find(" free, about ") != std::string::npos;
  for (const auto& w : warnings) warned |= w.find(" free, about ") != std::string::npos;
  EXPECT_TRUE(warned) << "no free-space warning before the write";

  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-200").ok);
  EXPECT_FALSE(fs::exists(dir / "checkpoint-300"));
  for (const auto& name : entry_names(dir))
    EXPECT_EQ(name.rfind("checkpoint-", 0), 0u) << "leftover " << name;
  // The next run resumes from the newest valid one.
  CheckpointStore next_run(dir);
  EXPECT_EQ(next_run.latest_valid().latest->step, 200);
}

TEST_F(SmallTmpfs, FinalOutputThatDoesNotFitFailsCleanlyAndKeepsThePreviousFile) {
  const fs::path lora = dir / "pytorch_lora_weights.safetensors";
  io::write_file_durably(lora, std::string(100 * 1024, 'a'));
  try {
    io::write_file_durably(lora, std::string(700 * 1024, 'b'));
    ADD_FAILURE() << "a 700 KB file fit in a 600 KB tmpfs";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pytorch_lora_weights.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(io::read_file(lora), std::string(100 * 1024, 'a'));
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"pytorch_lora_weights.safetensors"});
}

}  // namespace
}  // namespace dreamlora::checkpoint
