// Faults at every phase of a checkpoint commit (fault injection by call count through the sys::
// wrappers of io/durable_file): the checkpoint is treated as not written, nothing older is pruned, the
// newest valid checkpoint is what a resume takes. One test per row of the matrix in docs/CHECKPOINTS.md.
#include <gtest/gtest.h>

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

// A commit of sample_contents() makes these calls, in this order: write + fsync of each of the three
// files, write + fsync of MANIFEST.json, fsync of the temp directory, rename temp -> checkpoint-<N>
// (after rename of an invalid old checkpoint-<N> aside, when there is one), fsync of the output dir.
struct FaultRow {
  const char* phase;
  const char* fault;           // DREAMLORA_TEST_FAULT spec
  const char* error_contains;  // in the writer's error
  bool new_dir_survives;       // the fault comes after the rename: checkpoint-300 exists and verifies
};

void PrintTo(const FaultRow& r, std::ostream* os) {
  *os << r.phase << " / " << r.fault;
}

class CommitFault : public ::testing::TestWithParam<FaultRow> {
 protected:
  void SetUp() override {
    io::set_test_faults("");
    dir = dreamlora::testing::make_temp_dir("ckpt-fault");
    store = std::make_unique<CheckpointStore>(dir);
    store->set_warning_handler([](const std::string&) {});
  }
  void TearDown() override {
    io::set_test_faults("");
    fs::remove_all(dir);
  }
  fs::path dir;
  std::unique_ptr<CheckpointStore> store;
};

TEST_P(CommitFault, CheckpointCountsAsNotWrittenAndNothingOlderIsPruned) {
  const FaultRow row = GetParam();
  WriterOptions options;
  options.total_limit = 2;
  options.on_error = ErrorPolicy::kContinue;
  options.synchronous = true;
  CheckpointWriter writer(*store, options);
  writer.submit(100, sample_contents(100));
  writer.submit(200, sample_contents(200));

  io::set_test_faults(row.fault);
  writer.submit(300, sample_contents(300));
  io::set_test_faults("");
  auto s = writer.last();
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->ok) << row.phase << ": the fault did not surface";
  EXPECT_NE(s->error.find(row.error_contains), std::string::npos) << s->error;
  EXPECT_NE(s->error.find("checkpoint 300 not written"), std::string::npos) << s->error;
  EXPECT_TRUE(s->pruned.empty());
  EXPECT_EQ(writer.last_committed_step(), 200);

  // Nothing older was pruned and every checkpoint-<N> present verifies.
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-200").ok);
  for (const auto& info : store->list()) EXPECT_TRUE(info.valid) << info.path << ": " << info.reason;
  // No temporary directory is left behind by this process.
  for (const auto& name : entry_names(dir))
    EXPECT_EQ(name.rfind("checkpoint-", 0), 0u) << "leftover " << name;
  // A resume takes the newest valid checkpoint: 300 only where every file was fsynced before the rename.
  EXPECT_EQ(store->latest_valid().latest->step, row.new_dir_survives ? 300 : 200);

  // The retry of the step commits (or keeps) checkpoint 300 and only then prunes.
  writer.submit(300, sample_contents(300));
  ASSERT_TRUE(writer.last()->ok) << writer.last()->error;
  EXPECT_EQ(writer.last()->pruned, std::vector<int64_t>{100});
  EXPECT_EQ(store->latest_valid().latest->step, 300);
}

INSTANTIATE_TEST_SUITE_P(
    EveryPhase, CommitFault,
    ::testing::Values(
        FaultRow{"file_write", "write:ENOSPC:1", "write failed: No space left on device", false},
        FaultRow{"file_write_eio", "write:EIO:2", "write failed: Input/output error", false},
        FaultRow{"file_fsync_first", "fsync:1", "pytorch_lora_weights.safetensors: fsync failed", false},
        FaultRow{"file_fsync_last", "fsync:3", "trainer_state.json: fsync failed", false},
        FaultRow{"manifest_write", "write:ENOSPC:4", "MANIFEST.json: write failed", false},
        FaultRow{"manifest_fsync", "fsync:4", "MANIFEST.json: fsync failed", false},
        FaultRow{"temp_dir_fsync", "fsync:5", ".tmp-", false},
        FaultRow{"rename_to_final", "rename:1", "failed: Input/output error", false},
        FaultRow{"rename_to_final_exdev", "rename:18:1", "failed: Invalid cross-device link", false},
        FaultRow{"output_dir_fsync_after_rename", "fsync:6", "fsync failed", true}),
    [](const ::testing::TestParamInfo<FaultRow>& info) { return std::string(info.param.phase); });

TEST_F(CommitFault, FailedMoveAsideOfAnInvalidCheckpointKeepsItAndCommitsNothing) {
  store->commit(100, sample_contents(100));
  fs::create_directories(dir / "checkpoint-200");
  testing::write_text(dir / "checkpoint-200" / "trainer_state.json", "{}");
  io::set_test_faults("rename:1");
  EXPECT_THROW(store->commit(200, sample_contents(200)), Error);
  io::set_test_faults("");
  EXPECT_FALSE(verify_checkpoint(dir / "checkpoint-200").ok);  // the old invalid one, untouched
  EXPECT_TRUE(fs::exists(dir / "checkpoint-200" / "trainer_state.json"));
  EXPECT_EQ(store->latest_valid().latest->step, 100);
  for (const auto& name : entry_names(dir))
    EXPECT_EQ(name.rfind("checkpoint-", 0), 0u) << "leftover " << name;
  store->commit(200, sample_contents(200));
  EXPECT_EQ(store->latest_valid().latest->step, 200);
}

TEST_F(CommitFault, FailedRenameDuringPruneDeletesNothingAndKeepsEveryCheckpointValid) {
  for (int64_t step : {100, 200, 300}) store->commit(step, sample_contents(step));
  io::set_test_faults("rename:1");
  EXPECT_THROW(store->prune(1), Error);
  io::set_test_faults("");
  for (int64_t step : {100, 200, 300})
    EXPECT_TRUE(verify_checkpoint(dir / ("checkpoint-" + std::to_string(step))).ok) << step;
  EXPECT_EQ(store->latest_valid().latest->step, 300);
  store->prune(1);
  EXPECT_EQ(store->list().size(), 1u);
}

TEST_F(CommitFault, FaultSpecsThatDoNotParseAreErrorsNamingTheVariable) {
  EXPECT_THROW(io::set_test_faults("fsync"), Error);
  EXPECT_THROW(io::set_test_faults("chmod:1"), Error);
  EXPECT_THROW(io::set_test_faults("write:ENOPE:1"), Error);
  EXPECT_THROW(io::set_test_faults("rename:0"), Error);
  try {
    io::set_test_faults("open:1");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DREAMLORA_TEST_FAULT"), std::string::npos) << e.what();
  }
  io::set_test_faults("");
}

TEST_F(CommitFault, EnvironmentVariableArmsTheFaultInAFreshProcess) {
  store->commit(100, sample_contents(100));
  int status = testing::run_in_child([&] {
    // A forked child inherits the parent's armed state; the variable is what a spawned trainer reads.
    ::setenv("DREAMLORA_TEST_FAULT", "fsync:2", 1);
    std::vector<std::string> argv{"/proc/self/exe",
                                  "--gtest_filter=CommitFaultChild.ChildCommitUnderEnvFault"};
    ::setenv("DREAMLORA_FAULT_TEST_DIR", dir.c_str(), 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv("/proc/self/exe", args.data());
    return 97;
  });
  EXPECT_EQ(testing::exit_code(status), 0);
  EXPECT_FALSE(fs::exists(dir / "checkpoint-200"));
  EXPECT_EQ(store->latest_valid().latest->step, 100);
}

// Runs only as the child of the test above (it needs DREAMLORA_FAULT_TEST_DIR).
TEST(CommitFaultChild, ChildCommitUnderEnvFault) {
  const char* d = std::getenv("DREAMLORA_FAULT_TEST_DIR");
  if (!d) GTEST_SKIP() << "runs as the child of CommitFault.EnvironmentVariableArmsTheFaultInAFreshProcess";
  CheckpointStore child(d);
  child.set_warning_handler([](const std::string&) {});
  try {
    child.commit(200, sample_contents(200));
    ADD_FAILURE() << "DREAMLORA_TEST_FAULT=fsync:2 did not fail the commit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.safetensors: fsync failed"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dreamlora::checkpoint
