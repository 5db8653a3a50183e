// The object-storage mirror against a real S3-compatible server (s3rver on loopback): upload, resume on
// a fresh machine, a server dying mid-upload, damaged remote checkpoints, pruning, access errors.
#include <gtest/gtest.h>

#include "checkpoint/checkpoint_test_helpers.h"
#include "checkpoint/s3_test_support.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::S3rver;
using testing::sample_contents;

class S3MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_S3RVER(binary);
    root_ = dreamlora::testing::make_temp_dir("s3-mirror");
    server_ = std::make_unique<S3rver>(binary);
    ASSERT_TRUE(server_->start(root_ / "s3data")) << server_->error();
  }
  void TearDown() override {
    server_.reset();
    if (!root_.empty()) fs::remove_all(root_);
  }

  std::shared_ptr<S3Sink> make_sink(const std::string& url = "s3://test-bucket/runs/dog") {
    auto sink = std::make_shared<S3Sink>(S3Location::parse(url), server_->config());
    sink->set_warning_handler([this](const std::string& w) { warnings_.push_back(w); });
    return sink;
  }

  fs::path root_;
  std::unique_ptr<S3rver> server_;
  std::vector<std::string> warnings_;
};

void expect_same_files(const fs::path& a, const fs::path& b) {
  auto names = testing::entry_names(a);
  EXPECT_EQ(names, testing::entry_names(b));
  for (const auto& n : names) EXPECT_TRUE(io::read_file(a / n) == io::read_file(b / n)) << n << " differs";
}

TEST_F(S3MirrorTest, CommittedCheckpointResumesOnAFreshMachineByteForByte) {
  auto sink = make_sink();
  CheckpointStore store(root_ / "machine-a");
  store.add_mirror(sink);
  store.commit(10, sample_contents(10));
  store.commit(20, sample_contents(20));
  EXPECT_TRUE(sink->failures().empty()) << sink->summary();
  EXPECT_EQ(sink->uploaded_checkpoints(), 2);

  auto remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 2u);
  EXPECT_EQ(remote[1].step, 20);
  EXPECT_TRUE(remote[1].has_manifest);
  EXPECT_EQ(remote[1].objects, 4u);

  // A second machine with an empty output dir and its own client.
  remote::S3Client fresh(server_->config());
  const fs::path out_b = root_ / "machine-b";
  LatestRemoteResult r = latest_remote_valid(fresh, sink->location(), out_b);
  ASSERT_TRUE(r.latest.has_value());
  EXPECT_TRUE(r.skipped.empty());
  EXPECT_EQ(r.latest->path, out_b / "checkpoint-20");
  EXPECT_FALSE(r.latest->already_local);
  EXPECT_TRUE(verify_checkpoint(r.latest->path).ok);
  expect_same_files(root_ / "machine-a" / "checkpoint-20", out_b / "checkpoint-20");
  EXPECT_EQ(testing::entry_names(out_b), std::set<std::string>{"checkpoint-20"});  // no temp dirs left
  EXPECT_EQ(CheckpointStore(out_b).latest_valid().latest->step, 20);

  // Already local and valid: kept, nothing downloaded; nothing newer than the local one: nothing done.
  DownloadResult again = download_checkpoint(fresh, sink->location(), 20, out_b);
  EXPECT_TRUE(again.ok && again.already_local);
  EXPECT_FALSE(latest_remote_valid(fresh, sink->location(), out_b, /*after_step=*/20).latest.has_value());
}

TEST_F(S3MirrorTest, LargeFilesUseMultipartUploadAndListingPaginates) {
  remote::S3Config config = server_->config();
  config.multipart_threshold = 100 * 1024;  // the 300 KiB optimizer file goes in 3 parts + 1
  config.part_size = 96 * 1024;
  auto sink = std::make_shared<S3Sink>(S3Location::parse("s3://test-bucket/mp"), config);
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  store.commit(5, sample_contents(5, 300 * 1024));
  ASSERT_TRUE(sink->failures().empty()) << sink->summary();
  auto info = sink->client().head("test-bucket", "mp/checkpoint-5/optimizer.safetensors");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->size, 300u * 1024);
  EXPECT_FALSE(sink->client().head("test-bucket", "mp/checkpoint-5/nothing").has_value());

  EXPECT_EQ(sink->client().list("test-bucket", "mp/", /*max_keys=*/1).size(), 4u);  // 4 pages of 1
  DownloadResult d = download_checkpoint(sink->client(), sink->location(), 5, root_ / "b");
  ASSERT_TRUE(d.ok) << d.reason;
  expect_same_files(root_ / "a" / "checkpoint-5", root_ / "b" / "checkpoint-5");
}

TEST_F(S3MirrorTest, ServerStoppedMidUploadLeavesNoRemoteManifestAndLaterPublishCompletes) {
  auto sink = make_sink();
  int uploaded = 0;
  sink->set_after_upload_hook([&](const std::string&) {
    if (++uploaded == 1) server_->stop();  // dies after the first file of checkpoint 10
  });
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  EXPECT_NO_THROW(store.commit(10, sample_contents(10)));
  EXPECT_TRUE(verify_checkpoint(root_ / "a" / "checkpoint-10").ok);  // local commit unaffected
  ASSERT_EQ(sink->failures().size(), 1u);
  EXPECT_EQ(sink->failures()[0].step, 10);
  EXPECT_NE(sink->failures()[0].message.find("network error"), std::string::npos)
      << sink->failures()[0].message;
  ASSERT_FALSE(warnings_.empty());

  const int port = server_->port();
  sink->set_after_upload_hook(nullptr);
  ASSERT_TRUE(server_->start(root_ / "s3data", port)) << server_->error();
  auto remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 1u);
  EXPECT_FALSE(remote[0].has_manifest);  // the first file arrived, the manifest never did
  LatestRemoteResult none = latest_remote_valid(sink->client(), sink->location(), root_ / "b");
  EXPECT_FALSE(none.latest.has_value());
  ASSERT_EQ(none.skipped.size(), 1u);
  EXPECT_NE(none.skipped[0].reason.find("no MANIFEST.json"), std::string::npos);

  store.commit(20, sample_contents(20));
  EXPECT_EQ(sink->failures().size(), 1u) << sink->summary();
  LatestRemoteResult r = latest_remote_valid(sink->client(), sink->location(), root_ / "b");
  ASSERT_TRUE(r.latest.has_value());
  EXPECT_EQ(r.latest->path, root_ / "b" / "checkpoint-20");
  EXPECT_NE(sink->summary().find("1 failure"), std::string::npos) << sink->summary();
}

TEST_F(S3MirrorTest, FailedUploadIsRetriedOnRequest) {
  auto sink = make_sink();
  sink->set_after_upload_hook([&](const std::string&) { server_->stop(); });
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  store.commit(10, sample_contents(10));
  sink->set_after_upload_hook(nullptr);
  ASSERT_TRUE(server_->start(root_ / "s3data", server_->port())) << server_->error();
  EXPECT_TRUE(sink->retry_failed_upload());
  EXPECT_TRUE(download_checkpoint(sink->client(), sink->location(), 10, root_ / "b").ok);
  EXPECT_TRUE(sink->retry_failed_upload());  // nothing pending any more
}

TEST_F(S3MirrorTest, RemoteCheckpointWithoutManifestOrWithCorruptedObjectIsNeverUsed) {
  auto sink = make_sink();
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  for (int64_t step : {10, 20, 30}) store.commit(step, sample_contents(step));
  const remote::S3Client& c = sink->client();
  // 30: one object replaced by bytes of the same size; 20: manifest gone.
  const std::string key30 = sink->location().key(30, "optimizer.safetensors");
  std::string bytes = c.get_bytes("test-bucket", key30);
  bytes[bytes.size() / 2] ^= 0x5a;
  c.put_bytes("test-bucket", key30, bytes);
  c.remove("test-bucket", sink->location().key(20, kManifestName));

  std::vector<std::string> reports;
  const fs::path out_b = root_ / "b";
  LatestRemoteResult r = latest_remote_valid(c, sink->location(), out_b, -1,
                                             [&](const std::string& m) { reports.push_back(m); });
  ASSERT_TRUE(r.latest.has_value());
  EXPECT_EQ(r.latest->path, out_b / "checkpoint-10");
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_EQ(r.skipped[0].step, 30);
  EXPECT_NE(r.skipped[0].reason.find("optimizer.safetensors"), std::string::npos) << r.skipped[0].reason;
  EXPECT_NE(r.skipped[0].reason.find("checksum"), std::string::npos) << r.skipped[0].reason;
  EXPECT_EQ(r.skipped[1].step, 20);
  EXPECT_EQ(reports.size(), 2u);
  EXPECT_EQ(testing::entry_names(out_b), std::set<std::string>{"checkpoint-10"});

  // A remote object missing entirely is a defect of that checkpoint, not an exception.
  c.remove("test-bucket", sink->location().key(10, "trainer_state.json"));
  DownloadResult d = download_checkpoint(c, sink->location(), 10, root_ / "c");
  EXPECT_FALSE(d.ok);
  EXPECT_NE(d.reason.find("trainer_state.json"), std::string::npos) << d.reason;
  EXPECT_TRUE(testing::entry_names(root_ / "c").empty());
}

TEST_F(S3MirrorTest, PruningRemovesRemoteCheckpointsAndRepublishingIsANoOp) {
  auto sink = make_sink("s3://test-bucket");
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  for (int64_t step : {1, 2, 3}) store.commit(step, sample_contents(step, 1024));
  store.prune(1);
  auto remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 1u);
  EXPECT_EQ(remote[0].step, 3);

  sink->publish(root_ / "a" / "checkpoint-3", *verify_checkpoint(root_ / "a" / "checkpoint-3").manifest);
  EXPECT_TRUE(sink->failures().empty()) << sink->summary();
  EXPECT_NE(sink->summary().find("no failures"), std::string::npos) << sink->summary();
}

TEST_F(S3MirrorTest, AccessCheckPassesAndLeavesNoProbeObject) {
  auto sink = make_sink();
  EXPECT_NO_THROW(sink->check_access());
  EXPECT_TRUE(sink->client().list("test-bucket", "").empty());
}

TEST_F(S3MirrorTest, MissingBucketGivesAClearErrorBeforeTraining) {
  auto sink = make_sink("s3://no-such-bucket/run");
  try {
    sink->check_access();
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.http_status, 404);
    EXPECT_EQ(e.s3_code, "NoSuchBucket");
    EXPECT_NE(m.find("s3://no-such-bucket/run"), std::string::npos) << m;
    EXPECT_NE(m.find("bucket does not exist"), std::string::npos) << m;
  }
  // Resume from a missing bucket is an error too, not "no checkpoint".
  EXPECT_THROW(latest_remote_valid(sink->client(), sink->location(), root_ / "b"), remote::S3Error);
}

TEST_F(S3MirrorTest, UnknownAccessKeyGivesAClearErrorBeforeTraining) {
  remote::S3Config config = server_->config();
  config.access_key_id = "NOT-A-KEY";
  S3Sink sink(S3Location::parse("s3://test-bucket/run"), config);
  try {
    sink.check_access();
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    EXPECT_EQ(e.http_status, 403);
    EXPECT_EQ(e.s3_code, "InvalidAccessKeyId");
    EXPECT_NE(std::string(e.what()).find("(access key id NOT-A-KEY) are wrong"), std::string::npos)
        << e.what();
  }
}

TEST_F(S3MirrorTest, MakeMirrorBuildsS3SinkFromUrlAndEnvironment) {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  for (const char* name : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}) {
    const char* old = std::getenv(name);
    saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
  }
  ::setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
  ::unsetenv("AWS_SESSION_TOKEN");
  std::shared_ptr<CheckpointSink> sink;
  try {
    sink = make_mirror("s3://test-bucket/env", server_->endpoint());
  } catch (...) {
  }
  for (const auto& [name, value] : saved) {
    if (value)
      ::setenv(name.c_str(), value->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
  ASSERT_NE(sink, nullptr);
  ASSERT_NE(dynamic_cast<S3Sink*>(sink.get()), nullptr);
  EXPECT_NE(sink->describe().find(server_->endpoint()), std::string::npos) << sink->describe();
  EXPECT_NO_THROW(check_mirror_access(*sink));
  auto dir_sink = make_mirror((root_ / "nfs").string());
  EXPECT_NE(dynamic_cast<DirectorySink*>(dir_sink.get()), nullptr);
  EXPECT_NO_THROW(check_mirror_access(*dir_sink));
  EXPECT_TRUE(fs::is_directory(root_ / "nfs"));
}

TEST_F(S3MirrorTest, RepublishAfterAKilledUploadCompletesTheRemoteCheckpoint) {
  auto sink = make_sink();
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  // The first process died after its first object: files without a manifest are left remotely.
  sink->set_after_upload_hook([](const std::string& key) {
    if (key.find("MANIFEST") == std::string::npos) throw std::runtime_error("killed");
  });
  store.commit(6, sample_contents(6, 4096));
  auto remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 1u);
  EXPECT_FALSE(remote[0].has_manifest);

  auto restarted = make_sink();  // the next process, resuming from the local checkpoint-6
  CheckpointStore again(root_ / "a");
  again.add_mirror(restarted);
  EXPECT_TRUE(again.republish(6).empty());
  remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 1u);
  EXPECT_TRUE(remote[0].has_manifest);
  EXPECT_EQ(restarted->uploaded_checkpoints(), 1);
  remote::S3Client fresh(server_->config());
  EXPECT_TRUE(download_checkpoint(fresh, sink->location(), 6, root_ / "b").ok);
}

TEST_F(S3MirrorTest, FinalOutputsLandBesideTheCheckpointsAndRestoreLatestDownloads) {
  auto sink = make_sink();
  const fs::path out = root_ / "out";
  CheckpointStore store(out);
  store.add_mirror(sink);
  store.commit(8, sample_contents(8, 2048));
  io::write_file_durably(out / "pytorch_lora_weights.safetensors", "final lora");
  fs::create_directories(out / "validation");
  io::write_file_durably(out / "validation" / "step-8-0.png", "png");
  sink->publish_outputs(out, {"pytorch_lora_weights.safetensors", "validation/step-8-0.png"});
  EXPECT_EQ(sink->client().get_bytes_if_exists("test-bucket", "runs/dog/pytorch_lora_weights.safetensors"),
            std::optional<std::string>("final lora"));
  EXPECT_EQ(sink->client().get_bytes_if_exists("test-bucket", "runs/dog/validation/step-8-0.png"),
            std::optional<std::string>("png"));
  EXPECT_NE(sink->summary().find("2 output files"), std::string::npos) << sink->summary();
  // The outputs are not checkpoints: the listing still sees one.
  EXPECT_EQ(list_remote_checkpoints(sink->client(), sink->location()).size(), 1u);

  CheckpointStore fresh(root_ / "fresh");
  EXPECT_EQ(sink->restore_latest(fresh, -1, nullptr), std::optional<int64_t>(8));
  expect_same_files(out / "checkpoint-8", root_ / "fresh" / "checkpoint-8");
}

TEST_F(S3MirrorTest, FailedOutputUploadIsReportedInTheSummary) {
  auto sink = make_sink();
  io::write_file_durably(root_ / "README.md", "card");
  server_->stop();
  EXPECT_THROW(sink->publish_outputs(root_, {"README.md"}), std::exception);
  EXPECT_NE(sink->summary().find("upload of the final outputs"), std::string::npos) << sink->summary();
}

TEST_F(S3MirrorTest, PruningNeverRemovesTheNewestRemoteCheckpointBeforeANewerOneIsUp) {
  auto sink = make_sink();
  CheckpointStore store(root_ / "a");
  store.add_mirror(sink);
  store.commit(1, sample_contents(1, 1024));
  sink->set_after_upload_hook([](const std::string& key) {
    if (key.find("checkpoint-2/") != std::string::npos) throw std::runtime_error("HTTP 503 SlowDown");
  });
  store.commit(2, sample_contents(2, 1024));
  store.prune(
      1);  // local keeps checkpoint-2 only; the bucket must keep checkpoint-1, its newest complete one
  auto remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_FALSE(remote.empty());
  EXPECT_EQ(remote[0].step, 1);
  EXPECT_TRUE(remote[0].has_manifest);
  sink->set_after_upload_hook(nullptr);
  store.commit(3, sample_contents(3, 1024));
  store.prune(1);
  remote = list_remote_checkpoints(sink->client(), sink->location());
  ASSERT_EQ(remote.size(), 1u);  // 1 went once 3 was up; 2's partial objects went with local pruning
  EXPECT_EQ(remote[0].step, 3);
  EXPECT_TRUE(remote[0].has_manifest);
}

}  // namespace
}  // namespace dreamlora::checkpoint
