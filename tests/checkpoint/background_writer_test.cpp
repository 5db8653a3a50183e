// CheckpointWriter: the caller's stall is tiny next to the write, one write in flight at a time, pruning
// on the thread, error policies, and the synchronous mode.
#include "dreamlora/checkpoint/background_writer.h"

#include <gtest/gtest.h>

#include <thread>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::entry_names;
using testing::sample_contents;

struct WriterTest : ::testing::Test {
  void SetUp() override {
    test_hooks::reset();
    dir = dreamlora::testing::make_temp_dir("ckpt-writer");
    store = std::make_unique<CheckpointStore>(dir);
    store->set_warning_handler([](const std::string&) {});
  }
  void TearDown() override {
    test_hooks::reset();
    fs::remove_all(dir);
  }
  fs::path dir;
  std::unique_ptr<CheckpointStore> store;
};

TEST_F(WriterTest, SubmitReturnsLongBeforeTheWriteFinishes) {
  CheckpointWriter writer(*store, WriterOptions{});
  const size_t big = 48u << 20;  // enough bytes that serialising, hashing and fsync take a while
  double stall = writer.submit(100, sample_contents(100, big));
  writer.wait_idle();
  auto s = writer.last();
  ASSERT_TRUE(s && s->ok) << (s ? s->error : "no stats");
  std::cout << "[ writer ] stall " << stall * 1e3 << " ms, write " << s->write_seconds * 1e3 << " ms, "
            << s->bytes << " bytes" << std::endl;
  EXPECT_EQ(s->stall_seconds, stall);
  EXPECT_LT(stall * 20, s->write_seconds);
  EXPECT_GT(s->bytes, big);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  EXPECT_EQ(writer.last_committed_step(), 100);
}

TEST_F(WriterTest, SecondSubmitWaitsForTheWriteInFlightAndReportsTheWait) {
  CheckpointWriter writer(*store, WriterOptions{});
  writer.submit(1, sample_contents(1, 32u << 20));
  double stall = writer.submit(2, sample_contents(2, 1024));
  writer.wait_idle();
  auto h = writer.history();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_GT(stall, 0.0);
  EXPECT_LE(stall, h[0].write_seconds + 0.5);
  EXPECT_EQ(h[1].stall_seconds, stall);
  EXPECT_FALSE(writer.busy());
}

TEST_F(WriterTest, PrunesOnTheThreadToTheTotalLimit) {
  WriterOptions o;
  o.total_limit = 2;
  CheckpointWriter writer(*store, o);
  for (int64_t s = 1; s <= 4; ++s) writer.submit(s * 10, sample_contents(s * 10, 1024));
  writer.shutdown();
  EXPECT_EQ(entry_names(dir), (std::set<std::string>{"checkpoint-30", "checkpoint-40"}));
  auto h = writer.history();
  ASSERT_EQ(h.size(), 4u);
  EXPECT_EQ(h[2].pruned, std::vector<int64_t>{10});
  EXPECT_EQ(h[3].pruned, std::vector<int64_t>{20});
}

TEST_F(WriterTest, StopPolicyRaisesTheErrorAtTheNextCall) {
  CheckpointWriter writer(*store, WriterOptions{});
  writer.submit(1, sample_contents(1, 1024));
  writer.wait_idle();
  test_hooks::set_write_fault(2, ENOSPC);
  writer.submit(2, sample_contents(2, 1024));  // fails on the thread
  try {
    writer.wait_idle();
    ADD_FAILURE() << "error not raised";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("checkpoint 2 not written"), std::string::npos) << msg;
    EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  }
  EXPECT_EQ(writer.last_committed_step(), 1);
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-1"});
  writer.wait_idle();  // reported once
}

TEST_F(WriterTest, StopPolicyErrorSurfacesAtSubmitOrShutdownToo) {
  {
    CheckpointWriter writer(*store, WriterOptions{});
    test_hooks::set_write_fault(1, EIO);
    writer.submit(1, sample_contents(1, 1024));
    EXPECT_THROW(writer.submit(2, sample_contents(2, 1024)), Error);
  }
  CheckpointWriter writer(*store, WriterOptions{});
  test_hooks::set_write_fault(1, EIO);
  writer.submit(3, sample_contents(3, 1024));
  EXPECT_THROW(writer.shutdown(), Error);
}

TEST_F(WriterTest, ContinuePolicyRecordsTheErrorAndKeepsGoing) {
  WriterOptions o;
  o.on_error = ErrorPolicy::kContinue;
  CheckpointWriter writer(*store, o);
  test_hooks::set_write_fault(1, ENOSPC);
  writer.submit(1, sample_contents(1, 1024));
  writer.wait_idle();
  writer.submit(2, sample_contents(2, 1024));
  writer.shutdown();
  auto h = writer.history();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_FALSE(h[0].ok);
  EXPECT_NE(h[0].error.find("No space left on device"), std::string::npos);
  EXPECT_TRUE(h[1].ok);
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-2"});
}

TEST_F(WriterTest, SynchronousModeBlocksForTheWholeWrite) {
  WriterOptions o;
  o.synchronous = true;
  CheckpointWriter writer(*store, o);
  double stall = writer.submit(7, sample_contents(7, 8u << 20));
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-7").ok);  // already on disk when submit returns
  auto s = writer.last();
  ASSERT_TRUE(s && s->ok);
  EXPECT_GE(stall, s->write_seconds);
}

TEST_F(WriterTest, SubmitAfterShutdownIsAnError) {
  CheckpointWriter writer(*store, WriterOptions{});
  writer.shutdown();
  EXPECT_THROW(writer.submit(1, sample_contents(1, 16)), Error);
}

TEST(ErrorPolicy, ParsesTheFlagValues) {
  EXPECT_EQ(parse_error_policy("stop"), ErrorPolicy::kStop);
  EXPECT_EQ(parse_error_policy("continue"), ErrorPolicy::kContinue);
  try {
    parse_error_policy("ignore");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--on-checkpoint-error"), std::string::npos);
  }
}

TEST_F(WriterTest, PrepareRunsOnTheWriterThreadBeforeTheFilesAreWritten) {
  for (bool synchronous : {false, true}) {
    WriterOptions o;
    o.synchronous = synchronous;
    CheckpointWriter writer(*store, o);
    const int64_t step = synchronous ? 2 : 1;
    std::thread::id prepared_on;
    CheckpointContents c;
    c.prepare = [&prepared_on, step](CheckpointContents& contents) {
      prepared_on = std::this_thread::get_id();
      contents = sample_contents(step, 1024);
    };
    writer.submit(step, std::move(c));
    writer.wait_idle();
    EXPECT_EQ(prepared_on == std::this_thread::get_id(), synchronous);
    auto v = verify_checkpoint(dir / ("checkpoint-" + std::to_string(step)));
    ASSERT_TRUE(v.ok) << v.reason;
    EXPECT_EQ(v.manifest->files.size(), sample_contents(step, 1024).files.size());
  }
}

TEST_F(WriterTest, AFailingPrepareIsACheckpointErrorAndWritesNothing) {
  CheckpointWriter writer(*store, WriterOptions{});
  CheckpointContents c;
  c.prepare = [](CheckpointContents&) { fail("snapshot could not be serialised"); };
  writer.submit(3, std::move(c));
  try {
    writer.wait_idle();
    FAIL() << "expected the prepare error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("snapshot could not be serialised"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(entry_names(dir).empty());
}

}  // namespace
}  // namespace dreamlora::checkpoint
