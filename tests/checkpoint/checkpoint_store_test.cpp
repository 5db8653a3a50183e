// CheckpointStore: commit round trip, latest-valid selection, pruning rules, clean-up of leftovers,
// write failures and mirrors. Crash safety lives in crash_safety_test.cpp.
#include "dreamlora/checkpoint/checkpoint_store.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>
#include <cstring>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/safetensors.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::entry_names;
using testing::sample_contents;
using testing::write_text;

struct StoreTest : ::testing::Test {
  void SetUp() override {
    test_hooks::reset();
    dir = dreamlora::testing::make_temp_dir("ckpt-store");
    store = std::make_unique<CheckpointStore>(dir);
    store->set_warning_handler([this](const std::string& w) { warnings.push_back(w); });
  }
  void TearDown() override {
    test_hooks::reset();
    fs::remove_all(dir);
  }
  fs::path dir;
  std::unique_ptr<CheckpointStore> store;
  std::vector<std::string> warnings;
};

TEST_F(StoreTest, CommitWritesFilesAndManifestThatVerify) {
  CommitResult r = store->commit(100, sample_contents(100));
  EXPECT_EQ(r.path, dir / "checkpoint-100");
  EXPECT_FALSE(r.skipped_existing);
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"});  // no temp left behind
  EXPECT_EQ(entry_names(r.path),
            (std::set<std::string>{"MANIFEST.json", "optimizer.safetensors",
                                   "pytorch_lora_weights.safetensors", "trainer_state.json"}));
  Verification v = verify_checkpoint(r.path);
  ASSERT_TRUE(v.ok) << v.reason;
  EXPECT_EQ(v.bytes, r.bytes);
  EXPECT_EQ(v.manifest->step, 100);
  EXPECT_EQ(v.manifest->files.size(), 3u);
  // Tensor sets come back as written; byte files byte for byte.
  auto lora = io::safetensors::File::open(r.path / "pytorch_lora_weights.safetensors");
  auto expected = sample_contents(100);
  EXPECT_TRUE(torch::equal(lora.get("unet.down.lora.up.weight"), expected.files[0].tensors[1].second));
  EXPECT_EQ(lora.metadata().at("format"), "pt");
  EXPECT_EQ(io::read_file(r.path / "optimizer.safetensors"), expected.files[1].bytes);
}

TEST_F(StoreTest, CommitOfAnExistingValidStepKeepsIt) {
  store->commit(100, sample_contents(100));
  auto before = io::read_file(dir / "checkpoint-100" / "MANIFEST.json");
  CommitResult r = store->commit(100, sample_contents(999));
  EXPECT_TRUE(r.skipped_existing);
  EXPECT_EQ(io::read_file(dir / "checkpoint-100" / "MANIFEST.json"), before);
}

TEST_F(StoreTest, CommitReplacesAnInvalidDirectoryOfTheSameStep) {
  fs::create_directories(dir / "checkpoint-100");
  write_text(dir / "checkpoint-100" / "junk", "half a checkpoint");
  CommitResult r = store->commit(100, sample_contents(100));
  EXPECT_FALSE(r.skipped_existing);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  EXPECT_FALSE(fs::exists(dir / "checkpoint-100" / "junk"));
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"});
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("invalid"), std::string::npos);
}

TEST_F(StoreTest, CommitRejectsFileNamesOutsideTheDirectory) {
  CheckpointContents c;
  c.add_bytes("../escape", "x");
  EXPECT_THROW(store->commit(1, c), Error);
  CheckpointContents twice;
  twice.add_bytes("a", "x");
  twice.add_bytes("a", "y");
  EXPECT_THROW(store->commit(1, twice), Error);
  EXPECT_FALSE(fs::exists(dir / "checkpoint-1"));
}

TEST_F(StoreTest, LatestPicksHighestValidAndReportsSkippedOnes) {
  for (int64_t s : {100, 200, 300, 400}) store->commit(s, sample_contents(s));
  write_text(dir / "checkpoint-400" / "optimizer.safetensors", "corrupted");  // size differs
  fs::remove(dir / "checkpoint-300" / "MANIFEST.json");
  fs::create_directories(dir / "checkpoint-abc");  // not ours: neither picked nor reported
  fs::create_directories(dir / "checkpoint-0500");
  LatestResult r = store->latest_valid();
  ASSERT_TRUE(r.latest);
  EXPECT_EQ(r.latest->step, 200);
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_EQ(r.skipped[0].step, 400);
  EXPECT_NE(r.skipped[0].reason.find("optimizer.safetensors"), std::string::npos) << r.skipped[0].reason;
  EXPECT_EQ(r.skipped[1].step, 300);
  EXPECT_NE(r.skipped[1].reason.find("MANIFEST.json missing"), std::string::npos) << r.skipped[1].reason;
}

TEST_F(StoreTest, LatestOfAnEmptyOrMissingDirectoryIsNone) {
  EXPECT_FALSE(store->latest_valid().latest);
  CheckpointStore missing(dir / "does-not-exist");
  EXPECT_FALSE(missing.latest_valid().latest);
  EXPECT_TRUE(missing.list().empty());
}

TEST_F(StoreTest, ListReportsEveryCheckpointWithSizeAndValidity) {
  store->commit(20, sample_contents(20));
  store->commit(3, sample_contents(3));
  write_text(dir / "checkpoint-20" / "trainer_state.json",
             "{\"global_step\": 21}\n");  // same size, new bytes
  auto all = store->list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].step, 3);
  EXPECT_TRUE(all[0].valid);
  EXPECT_GT(all[0].bytes, 256u * 1024);
  EXPECT_EQ(all[1].step, 20);
  EXPECT_FALSE(all[1].valid);
  EXPECT_NE(all[1].reason.find("trainer_state.json: checksum"), std::string::npos) << all[1].reason;
}

TEST_F(StoreTest, PruneRemovesOldestFirstAndKeepsTheLimit) {
  for (int64_t s : {10, 20, 30, 40, 50}) store->commit(s, sample_contents(s, 1024));
  PruneResult r = store->prune(2);
  ASSERT_EQ(r.removed.size(), 3u);
  EXPECT_EQ(r.removed[0].step, 10);
  EXPECT_EQ(r.removed[1].step, 20);
  EXPECT_EQ(r.removed[2].step, 30);
  EXPECT_EQ(entry_names(dir), (std::set<std::string>{"checkpoint-40", "checkpoint-50"}));
  EXPECT_TRUE(store->prune(0).removed.empty());
  EXPECT_TRUE(store->prune(2).removed.empty());
}

TEST_F(StoreTest, PruneNeverDeletesTheNewestValidNorAnythingNewerNorOtherNames) {
  for (int64_t s : {10, 20, 30}) store->commit(s, sample_contents(s, 1024));
  fs::create_directories(dir / "checkpoint-40");                  // newer but invalid: evidence, left alone
  write_text(dir / "checkpoint-30" / "trainer_state.json", "x");  // newest is now invalid too
  fs::create_directories(dir / "checkpoint-final-backup");
  fs::create_directories(dir / "my-notes");
  fs::create_directories(dir / "checkpoint-abc");
  write_text(dir / "pytorch_lora_weights.safetensors", "final result");
  PruneResult r = store->prune(1);
  // Newest valid is 20: kept. 10 removed; 30 and 40 are newer than it and untouched.
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.removed[0].step, 10);
  EXPECT_EQ(entry_names(dir), (std::set<std::string>{"checkpoint-20", "checkpoint-30", "checkpoint-40",
                                                     "checkpoint-final-backup", "my-notes", "checkpoint-abc",
                                                     "pytorch_lora_weights.safetensors"}));
}

TEST_F(StoreTest, PruneRemovesInvalidOnesOlderThanTheKeptValidOnes) {
  for (int64_t s : {10, 20, 30}) store->commit(s, sample_contents(s, 1024));
  fs::remove(dir / "checkpoint-20" / "MANIFEST.json");
  PruneResult r = store->prune(2);  // keeps 30 and 10 (the two newest valid); 20 is garbage
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.removed[0].step, 20);
  EXPECT_EQ(entry_names(dir), (std::set<std::string>{"checkpoint-10", "checkpoint-30"}));
}

TEST_F(StoreTest, PruneWithNoValidCheckpointDeletesNothing) {
  fs::create_directories(dir / "checkpoint-1");
  fs::create_directories(dir / "checkpoint-2");
  EXPECT_TRUE(store->prune(1).removed.empty());
  EXPECT_EQ(entry_names(dir).size(), 2u);
}

TEST_F(StoreTest, CleanupRemovesOnlyOurDeadTemporaries) {
  store->commit(10, sample_contents(10, 1024));
  // A dead process id: fork a child that exits at once and reap it.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string d = std::to_string(dead);
  for (auto name : {".checkpoint-20.tmp-" + d, ".checkpoint-10.deleting-" + d, ".checkpoint-30.invalid-" + d,
                    ".checkpoint-40.tmp-" + std::to_string(::getpid())})
    fs::create_directories(dir / name / "sub");
  // Not ours: different shapes of name, and a temp of a live process (the test runner's parent).
  const std::string live = std::to_string(::getppid());
  for (const std::string& name : std::vector<std::string>{".checkpoint-50.tmp-" + live, ".checkpoint-x.tmp-1",
                                                          "checkpoint-final-backup", "my-notes",
                                                          ".checkpoint-60.tmp-", "tmp-checkpoint-7"})
    fs::create_directories(dir / name);
  auto removed = store->cleanup_temporaries();
  EXPECT_EQ(removed.size(), 4u);
  EXPECT_EQ(entry_names(dir), (std::set<std::string>{"checkpoint-10", ".checkpoint-50.tmp-" + live,
                                                     ".checkpoint-x.tmp-1", "checkpoint-final-backup",
                                                     "my-notes", ".checkpoint-60.tmp-", "tmp-checkpoint-7"}));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("still running"), std::string::npos);
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-10").ok);
}

TEST_F(StoreTest, InjectedWriteFailureRemovesTempKeepsEarlierAndNamesPathAndErrno) {
  store->commit(100, sample_contents(100));
  for (int nth : {1, 2, 4}) {  // first file, a middle file, the manifest
    test_hooks::set_write_fault(nth, ENOSPC);
    try {
      store->commit(200, sample_contents(200));
      ADD_FAILURE() << "write " << nth << " did not fail";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(dir.string() + "/.checkpoint-200.tmp-"), std::string::npos) << msg;
      EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
    }
    EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"}) << "after failing write " << nth;
    EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  }
  test_hooks::set_write_fault(1, EIO);
  EXPECT_THROW(store->commit(200, sample_contents(200)), Error);
  test_hooks::reset();
  store->commit(200, sample_contents(200));  // the disk "recovered"
  EXPECT_EQ(store->latest_valid().latest->step, 200);
}

TEST_F(StoreTest, WriteFaultFromTheEnvironmentVariableFailsThatWrite) {
  store->commit(100, sample_contents(100));
  int status = testing::run_in_child([&] {
    test_hooks::reset();  // the count is per process and the parent already wrote checkpoint-100
    ::setenv("DREAMLORA_TEST_FAIL_WRITE", "3:EIO", 1);  // the third file: trainer_state.json
    try {
      CheckpointStore(dir).commit(200, sample_contents(200));
    } catch (const Error& e) {
      const std::string msg = e.what();
      return msg.find("trainer_state.json") != std::string::npos &&
                     msg.find(std::strerror(EIO)) != std::string::npos
                 ? 3
                 : 4;
    }
    return 0;
  });
  EXPECT_EQ(testing::exit_code(status), 3);
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"});
}

TEST_F(StoreTest, RealFileSizeLimitFailureIsReportedAndCleanedUp) {
  // RLIMIT_FSIZE makes the kernel fail write(2) with EFBIG: a genuine short-disk failure without root.
  store->commit(100, sample_contents(100));
  const fs::path msg_file = dir.parent_path() / (dir.filename().string() + ".msg");
  int status = testing::run_in_child([&] {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim{64 * 1024, 64 * 1024};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      CheckpointStore(dir).commit(200, sample_contents(200, 1 << 20));
    } catch (const Error& e) {
      write_text(msg_file, e.what());
      return 3;
    }
    return 0;
  });
  EXPECT_EQ(testing::exit_code(status), 3);
  const std::string msg = io::read_file(msg_file);
  EXPECT_NE(msg.find("optimizer.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(EFBIG)), std::string::npos) << msg;
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"});
  EXPECT_TRUE(verify_checkpoint(dir / "checkpoint-100").ok);
  fs::remove(msg_file);
}

TEST_F(StoreTest, ReadOnlyOutputDirFailsWithPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  store->commit(100, sample_contents(100));
  ::chmod(dir.c_str(), 0555);
  try {
    store->commit(200, sample_contents(200));
    ADD_FAILURE() << "commit into a read-only directory succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Permission denied"), std::string::npos) << e.what();
  }
  ::chmod(dir.c_str(), 0755);
  EXPECT_EQ(entry_names(dir), std::set<std::string>{"checkpoint-100"});
}

TEST_F(StoreTest, FreeSpaceWarningWhenTheCheckpointCannotFit) {
  EXPECT_FALSE(free_space_warning(dir, 1024));
  auto w = free_space_warning(dir, uint64_t{1} << 62);
  ASSERT_TRUE(w);
  EXPECT_NE(w->find(dir.string()), std::string::npos);
  EXPECT_NE(w->find("free"), std::string::npos);
}

TEST_F(StoreTest, DirectoryMirrorReceivesCommitsAndPrunes) {
  auto mirror_dir = dreamlora::testing::make_temp_dir("ckpt-mirror");
  store->add_mirror(std::make_shared<DirectorySink>(mirror_dir));
  for (int64_t s : {1, 2, 3}) store->commit(s, sample_contents(s, 1024));
  store->prune(2);
  EXPECT_EQ(entry_names(mirror_dir), (std::set<std::string>{"checkpoint-2", "checkpoint-3"}));
  EXPECT_TRUE(verify_checkpoint(mirror_dir / "checkpoint-3").ok);
  EXPECT_EQ(io::read_file(mirror_dir / "checkpoint-3" / "optimizer.safetensors"),
            io::read_file(dir / "checkpoint-3" / "optimizer.safetensors"));
  fs::remove_all(mirror_dir);
}

TEST_F(StoreTest, FailingMirrorIsAWarningAndTheLocalCheckpointStands) {
  struct Broken : CheckpointSink {
    std::string describe() const override { return "broken"; }
    void publish(const fs::path&, const Manifest&) override { fail("network unreachable"); }
    void remove_now(int64_t) override {}
    void publish_outputs(const fs::path&, const std::vector<std::string>&) override {}
  };
  store->add_mirror(std::make_shared<Broken>());
  CommitResult r = store->commit(5, sample_contents(5, 1024));
  EXPECT_TRUE(verify_checkpoint(r.path).ok);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("network unreachable"), std::string::npos);
}

TEST_F(StoreTest, AFreshMachineRestoresTheNewestValidCheckpointFromADirectoryMirror) {
  auto mirror_dir = dreamlora::testing::make_temp_dir("ckpt-mirror");
  store->add_mirror(std::make_shared<DirectorySink>(mirror_dir));
  for (int64_t s : {1, 2, 3}) store->commit(s, sample_contents(s, 1024));
  write_text(mirror_dir / "checkpoint-3" / "optimizer.safetensors", "damaged");  // newest is unusable

  auto fresh_dir = dreamlora::testing::make_temp_dir("ckpt-fresh");
  CheckpointStore fresh(fresh_dir);
  DirectorySink mirror(mirror_dir);
  std::vector<std::string> reports;
  auto step = mirror.restore_latest(fresh, -1, [&](const std::string& r) { reports.push_back(r); });
  ASSERT_EQ(step, std::optional<int64_t>(2));
  ASSERT_FALSE(reports.empty());
  EXPECT_NE(reports[0].find("checkpoint 3"), std::string::npos) << reports[0];
  EXPECT_EQ(entry_names(fresh_dir), (std::set<std::string>{"checkpoint-2"}));  // no temporaries left
  for (const auto& name : entry_names(dir / "checkpoint-2"))  // the manifest too: byte for byte
    EXPECT_EQ(io::read_file(fresh_dir / "checkpoint-2" / name), io::read_file(dir / "checkpoint-2" / name))
        << name;
  EXPECT_EQ(mirror.restore_latest(fresh, 2, nullptr), std::nullopt);  // nothing newer than the local one
  fs::remove_all(mirror_dir);
  fs::remove_all(fresh_dir);
}

TEST_F(StoreTest, RepublishCompletesAMirrorCopyThatWasCutShort) {
  store->commit(4, sample_contents(4, 1024));
  auto mirror_dir = dreamlora::testing::make_temp_dir("ckpt-mirror");
  fs::create_directories(mirror_dir / "checkpoint-4");  // a copy that died before its manifest
  write_text(mirror_dir / "checkpoint-4" / "optimizer.safetensors", "half");
  store->add_mirror(std::make_shared<DirectorySink>(mirror_dir));
  EXPECT_TRUE(store->republish(4).empty());
  EXPECT_TRUE(verify_checkpoint(mirror_dir / "checkpoint-4").ok);
  fs::remove_all(mirror_dir);
}

TEST_F(StoreTest, DirectoryMirrorReceivesTheFinalOutputs) {
  auto mirror_dir = dreamlora::testing::make_temp_dir("ckpt-mirror");
  write_text(dir / "pytorch_lora_weights.safetensors", "lora bytes");
  fs::create_directories(dir / "validation");
  write_text(dir / "validation" / "step-4-0.png", "png bytes");
  DirectorySink mirror(mirror_dir);
  mirror.publish_outputs(dir, {"pytorch_lora_weights.safetensors", "validation/step-4-0.png"});
  EXPECT_EQ(io::read_file(mirror_dir / "pytorch_lora_weights.safetensors"), "lora bytes");
  EXPECT_EQ(io::read_file(mirror_dir / "validation" / "step-4-0.png"), "png bytes");
  fs::remove_all(mirror_dir);
}

TEST_F(StoreTest, ImportRefusesASourceThatDoesNotVerify) {
  store->commit(2, sample_contents(2, 1024));
  write_text(dir / "checkpoint-2" / "trainer_state.json", "changed");
  auto other = dreamlora::testing::make_temp_dir("ckpt-other");
  CheckpointStore target(other);
  EXPECT_THROW(target.import_checkpoint(2, dir / "checkpoint-2"), Error);
  EXPECT_TRUE(entry_names(other).empty());
  fs::remove_all(other);
}

TEST_F(StoreTest, AMirrorKeepsItsNewestCompleteCheckpointWhenTheNewerCopyFailed) {
  auto mirror_dir = dreamlora::testing::make_temp_dir("ckpt-mirror");
  // The mirror's disk fills up at checkpoint 3: its checkpoint-2 must survive local pruning.
  struct FlakyDirectory : DirectorySink {
    using DirectorySink::DirectorySink;
    bool fail = false;
    void publish(const fs::path& dir, const Manifest& m) override {
      if (fail) dreamlora::fail("No space left on device");
      DirectorySink::publish(dir, m);
    }
  };
  auto mirror = std::make_shared<FlakyDirectory>(mirror_dir);
  store->add_mirror(mirror);
  for (int64_t s : {1, 2}) store->commit(s, sample_contents(s, 1024));
  store->prune(1);
  EXPECT_EQ(entry_names(mirror_dir), (std::set<std::string>{"checkpoint-2"}));
  mirror->fail = true;
  store->commit(3, sample_contents(3, 1024));
  store->prune(1);  // local: checkpoint-3 only
  EXPECT_EQ(entry_names(mirror_dir), (std::set<std::string>{"checkpoint-2"}));
  mirror->fail = false;
  store->commit(4, sample_contents(4, 1024));
  store->prune(1);
  EXPECT_EQ(entry_names(mirror_dir), (std::set<std::string>{"checkpoint-4"}));  // 2 went once 4 was in
  fs::remove_all(mirror_dir);
}

}  // namespace
}  // namespace dreamlora::checkpoint
