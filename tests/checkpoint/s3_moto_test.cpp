// The S3 mirror against a server that verifies SigV4 signatures (moto's server mode with IAM
// authentication enforced): s3rver accepts any signature, so only these tests prove that the requests
// dreamlora signs (PUT, multipart, GET, HEAD, LIST, DELETE) are signed right, and that a wrong secret
// gives a clear error naming the key id.
#include <gtest/gtest.h>

#include "checkpoint/checkpoint_test_helpers.h"
#include "checkpoint/moto_test_support.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::MotoServer;
using testing::sample_contents;

class S3SignatureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_MOTO(venv);
    root_ = dreamlora::testing::make_temp_dir("s3-moto");
    server_ = std::make_unique<MotoServer>(venv);
    ASSERT_TRUE(server_->start()) << server_->error();
  }
  void TearDown() override {
    server_.reset();
    if (!root_.empty()) fs::remove_all(root_);
  }
  fs::path root_;
  std::unique_ptr<MotoServer> server_;
};

TEST_F(S3SignatureTest, SignedUploadMultipartListDownloadAndDeleteAreAccepted) {
  remote::S3Config config = server_->config();
  config.multipart_threshold = 5u << 20;  // S3's (and moto's) smallest part is 5 MiB
  config.part_size = 5u << 20;
  auto sink = std::make_shared<S3Sink>(S3Location::parse("s3://moto-bucket/runs/dog"), config);
  std::vector<std::string> warnings;
  sink->set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  EXPECT_NO_THROW(sink->check_access());

  CheckpointStore store(root_ / "machine-a");
  store.set_warning_handler([](const std::string&) {});
  store.add_mirror(sink);
  store.commit(10, sample_contents(10));
  store.commit(20, sample_contents(20, (6u << 20) + 123));  // multipart: 5 MiB + the rest
  store.commit(30, sample_contents(30));
  ASSERT_TRUE(sink->failures().empty()) << sink->summary();
  store.prune(2);  // DELETE of checkpoint 10's objects
  ASSERT_TRUE(sink->failures().empty()) << sink->summary();

  remote::S3Client fresh(server_->config());
  auto remote = list_remote_checkpoints(fresh, sink->location());
  ASSERT_EQ(remote.size(), 2u);
  EXPECT_EQ(remote[0].step, 20);
  EXPECT_EQ(fresh.list("moto-bucket", "runs/dog/", /*max_keys=*/3).size(), 8u);  // paginated
  ASSERT_TRUE(fresh.head("moto-bucket", "runs/dog/checkpoint-20/optimizer.safetensors").has_value());

  DownloadResult d = download_checkpoint(fresh, sink->location(), 20, root_ / "machine-b");
  ASSERT_TRUE(d.ok) << d.reason;
  for (const auto& name : testing::entry_names(root_ / "machine-a" / "checkpoint-20"))
    EXPECT_TRUE(io::read_file(root_ / "machine-a" / "checkpoint-20" / name) ==
                io::read_file(root_ / "machine-b" / "checkpoint-20" / name))
        << name;
  LatestRemoteResult latest = latest_remote_valid(fresh, sink->location(), root_ / "machine-c");
  ASSERT_TRUE(latest.latest.has_value());
  EXPECT_EQ(latest.latest->path, root_ / "machine-c" / "checkpoint-30");
}

void expect_rejected_naming_key(const std::function<void()>& call, const std::string& key_id,
                                const std::string& code) {
  try {
    call();
    ADD_FAILURE() << "the server accepted a request signed with the wrong credentials";
  } catch (const remote::S3Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.http_status, 403) << m;
    if (!code.empty()) EXPECT_EQ(e.s3_code, code) << m;
    EXPECT_NE(m.find("access key id " + key_id), std::string::npos) << m;
    EXPECT_FALSE(e.network) << m;
  }
}

TEST_F(S3SignatureTest, WrongSecretIsRejectedWithAnErrorNamingTheKeyId) {
  remote::S3Config config = server_->config();
  config.secret_access_key = "not-the-secret";
  S3Sink sink(S3Location::parse("s3://moto-bucket/run"), config);
  const std::string key = server_->key_id();
  expect_rejected_naming_key([&] { sink.check_access(); }, key, "SignatureDoesNotMatch");
  expect_rejected_naming_key([&] { sink.client().put_bytes("moto-bucket", "run/x", "x"); }, key,
                             "SignatureDoesNotMatch");
  // HEAD has no error body: the status alone must still name the key.
  expect_rejected_naming_key([&] { sink.client().head("moto-bucket", "run/x"); }, key, "");
  // Resume is an error too, not "no checkpoint".
  expect_rejected_naming_key([&] { latest_remote_valid(sink.client(), sink.location(), root_ / "b"); }, key,
                             "SignatureDoesNotMatch");

  remote::S3Config unknown = server_->config();
  unknown.access_key_id = "AKIAUNKNOWNKEY000000";
  S3Sink sink2(S3Location::parse("s3://moto-bucket/run"), unknown);
  expect_rejected_naming_key([&] { sink2.check_access(); }, "AKIAUNKNOWNKEY000000", "InvalidAccessKeyId");

  // The right secret still works afterwards: nothing above was accepted by accident.
  remote::S3Client good(server_->config());
  EXPECT_TRUE(good.list("moto-bucket", "run/").empty());
}

}  // namespace
}  // namespace dreamlora::checkpoint
