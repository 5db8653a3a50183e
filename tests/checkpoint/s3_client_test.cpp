// S3 client behaviour that needs no real server: URL and config parsing, credentials, retries and
// the errors a loopback stub answering 403 / 5xx produces.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "checkpoint/s3_test_support.h"
#include "dreamlora/checkpoint/s3_sink.h"

namespace dreamlora::checkpoint {
namespace {

using testing::stub_config;
using testing::StubHttpServer;

const char* kErrorXml = R"(<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>%CODE%</Code><Message>%MSG%</Message><RequestId>R1</RequestId></Error>)";

std::string error_xml(const std::string& code, const std::string& message) {
  std::string s = kErrorXml;
  s.replace(s.find("%CODE%"), 6, code);
  s.replace(s.find("%MSG%"), 5, message);
  return s;
}

// Sets environment variables for one scope, restoring the previous values after.
class ScopedEnv {
 public:
  void set(const char* name, const char* value) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second)
        ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else
        ::unsetenv(it->first.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

void clear_aws_env(ScopedEnv& env) {
  for (const char* n : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_S3_FORCE_PATH_STYLE"})
    env.set(n, nullptr);
}

TEST(S3Url, EncodesEverythingButUnreservedCharactersAndOptionallySlashes) {
  EXPECT_EQ(remote::s3_uri_encode("run 1/checkpoint-10/a+b=c~._-", true),
            "run%201/checkpoint-10/a%2Bb%3Dc~._-");
  EXPECT_EQ(remote::s3_uri_encode("a/b", false), "a%2Fb");
}

TEST(S3Location, ParsesBucketAndPrefixAndBuildsCheckpointKeys) {
  S3Location l = S3Location::parse("s3://my-bucket/runs/dog/");
  EXPECT_EQ(l.bucket, "my-bucket");
  EXPECT_EQ(l.prefix, "runs/dog");
  EXPECT_EQ(l.key(1500, "MANIFEST.json"), "runs/dog/checkpoint-1500/MANIFEST.json");
  EXPECT_EQ(l.url(), "s3://my-bucket/runs/dog");
  S3Location root = S3Location::parse("s3://my-bucket");
  EXPECT_EQ(root.prefix, "");
  EXPECT_EQ(root.checkpoint_prefix(7), "checkpoint-7/");
}

TEST(S3Location, RejectsUrlsWithoutBucketOrWithInvalidBucketNames) {
  EXPECT_THROW(S3Location::parse("s3://"), Error);
  EXPECT_THROW(S3Location::parse("s3://Upper_Case/x"), Error);
  EXPECT_THROW(S3Location::parse("gs://bucket/x"), Error);
  EXPECT_THROW(make_mirror("gs://bucket/x"), Error);
}

TEST(S3Config, ReadsEndpointRegionAndCredentialsFromEnvironment) {
  ScopedEnv env;
  clear_aws_env(env);
  env.set("AWS_ACCESS_KEY_ID", "AKID1");
  env.set("AWS_SECRET_ACCESS_KEY", "SECRET1");
  env.set("AWS_SESSION_TOKEN", "TOKEN1");
  env.set("AWS_REGION", "eu-west-3");
  env.set("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/");
  remote::S3Config c = remote::S3Config::from_environment();
  EXPECT_EQ(c.endpoint, "http://127.0.0.1:9000");
  EXPECT_TRUE(c.path_style);
  EXPECT_EQ(c.region, "eu-west-3");
  EXPECT_EQ(c.access_key_id, "AKID1");
  EXPECT_EQ(c.session_token, "TOKEN1");
  EXPECT_EQ(remote::S3Config::from_environment("https://minio.local:9000").endpoint,
            "https://minio.local:9000");
  EXPECT_EQ(c.describe().find("SECRET1"), std::string::npos);
}

TEST(S3Config, DefaultsToAwsVirtualHostedInUsEast1) {
  ScopedEnv env;
  clear_aws_env(env);
  env.set("AWS_ACCESS_KEY_ID", "AKID1");
  env.set("AWS_SECRET_ACCESS_KEY", "SECRET1");
  remote::S3Config c = remote::S3Config::from_environment();
  EXPECT_EQ(c.endpoint, "");
  EXPECT_FALSE(c.path_style);
  EXPECT_EQ(c.region, "us-east-1");
}

TEST(S3Config, ReadsTheSelectedProfileOfTheSharedCredentialsFile) {
  ScopedEnv env;
  clear_aws_env(env);
  auto dir = dreamlora::testing::make_temp_dir("s3-creds");
  {
    std::ofstream f(dir / "credentials");
    f << "[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFSECRET\n\n"
         "# comment\n[train]\naws_access_key_id=TRAINKEY\naws_secret_access_key=TRAINSECRET\n"
         "aws_session_token = TRAINTOKEN\n";
  }
  env.set("AWS_SHARED_CREDENTIALS_FILE", (dir / "credentials").c_str());
  EXPECT_EQ(remote::S3Config::from_environment().access_key_id, "DEF");
  env.set("AWS_PROFILE", "train");
  remote::S3Config c = remote::S3Config::from_environment();
  EXPECT_EQ(c.access_key_id, "TRAINKEY");
  EXPECT_EQ(c.secret_access_key, "TRAINSECRET");
  EXPECT_EQ(c.session_token, "TRAINTOKEN");
  std::filesystem::remove_all(dir);
}

TEST(S3Config, MissingCredentialsSayWhereTheyAreLookedFor) {
  ScopedEnv env;
  clear_aws_env(env);
  env.set("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
  try {
    remote::S3Config::from_environment();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("AWS_ACCESS_KEY_ID"), std::string::npos) << m;
    EXPECT_NE(m.find("/nonexistent/credentials"), std::string::npos) << m;
  }
  env.set("AWS_SECRET_ACCESS_KEY", "ONLYSECRET");
  try {
    remote::S3Config::from_environment();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("ONLYSECRET"), std::string::npos) << e.what();
  }
}

TEST(S3ClientStub, WrongCredentialsGiveAClear403ErrorWithoutTheSecret) {
  StubHttpServer stub(
      {{403, error_xml("InvalidAccessKeyId",
                       "The AWS Access Key Id you provided does not exist in our records.")}});
  remote::S3Config config = stub_config(stub.endpoint());
  S3Sink sink(S3Location::parse("s3://train-bucket/run1"), config);
  try {
    sink.check_access();
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.http_status, 403);
    EXPECT_EQ(e.s3_code, "InvalidAccessKeyId");
    EXPECT_NE(m.find("s3://train-bucket/run1"), std::string::npos) << m;
    EXPECT_NE(m.find("HTTP 403 InvalidAccessKeyId"), std::string::npos) << m;
    EXPECT_NE(m.find("AWS_SECRET_ACCESS_KEY"), std::string::npos) << m;  // says what to fix
    EXPECT_EQ(m.find(config.secret_access_key), std::string::npos) << m;
  }
  // 403 is not retried: one request, signed SigV4 with the payload hash header s3rver/S3 require.
  auto reqs = stub.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].rfind("GET /train-bucket?list-type=2&max-keys=1&prefix=run1%2F HTTP/1.1", 0), 0u)
      << reqs[0];
  EXPECT_NE(reqs[0].find("Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), std::string::npos)
      << reqs[0];
  EXPECT_NE(reqs[0].find("/us-east-1/s3/aws4_request"), std::string::npos) << reqs[0];
  EXPECT_NE(
      reqs[0].find("x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
      std::string::npos)
      << reqs[0];
  EXPECT_EQ(reqs[0].find(config.secret_access_key), std::string::npos);
}

TEST(S3ClientStub, AccessDeniedNamesTheMissingPermission) {
  StubHttpServer stub({{200, "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"},
                       {403, error_xml("AccessDenied", "Access Denied")}});
  S3Sink sink(S3Location::parse("s3://train-bucket/run1"), stub_config(stub.endpoint()));
  try {
    sink.check_access();
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.s3_code, "AccessDenied");
    EXPECT_NE(m.find("s3:PutObject"), std::string::npos) << m;
  }
  auto reqs = stub.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].rfind("PUT /train-bucket/run1/.dreamlora-access-check-", 0), 0u) << reqs[1];
  EXPECT_NE(reqs[1].find("x-amz-content-sha256: UNSIGNED-PAYLOAD"), std::string::npos) << reqs[1];
}

TEST(S3ClientStub, ServerErrorsAreRetriedWithBackoffUntilSuccess) {
  StubHttpServer stub({{503, error_xml("SlowDown", "Please reduce your request rate.")},
                       {500, error_xml("InternalError", "We encountered an internal error.")},
                       {200, ""}});
  remote::S3Client client(stub_config(stub.endpoint()));
  client.put_bytes("train-bucket", "k", "hello");
  EXPECT_EQ(stub.requests().size(), 3u);
}

TEST(S3ClientStub, PersistentServerErrorsFailWithStatusCodeAndAttempts) {
  StubHttpServer stub({{503, error_xml("SlowDown", "Please reduce your request rate.")}});
  remote::S3Client client(stub_config(stub.endpoint()));
  try {
    client.put_bytes("train-bucket", "run/checkpoint-5/x", "hello");
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.http_status, 503);
    EXPECT_EQ(e.s3_code, "SlowDown");
    EXPECT_NE(m.find("PUT s3://train-bucket/run/checkpoint-5/x: HTTP 503 SlowDown"), std::string::npos) << m;
    EXPECT_NE(m.find("after 3 attempts"), std::string::npos) << m;
  }
  EXPECT_EQ(stub.requests().size(), 3u);
}

TEST(S3ClientStub, ListingFollowsContinuationTokensEncodedInTheQuery) {
  StubHttpServer stub({{200,
                        "<ListBucketResult><Contents><Key>p/b</Key><Size>2</Size></Contents>"
                        "<Contents><Key>p/a</Key><Size>1</Size></Contents><IsTruncated>true</IsTruncated>"
                        "<NextContinuationToken>1ab/+c=</NextContinuationToken></ListBucketResult>"},
                       {200,
                        "<ListBucketResult><Contents><Key>p/c</Key><Size>3</Size></Contents>"
                        "<IsTruncated>false</IsTruncated></ListBucketResult>"}});
  remote::S3Client client(stub_config(stub.endpoint()));
  auto objects = client.list("train-bucket", "p/", 2);
  ASSERT_EQ(objects.size(), 3u);
  EXPECT_EQ(objects[0].key, "p/a");
  EXPECT_EQ(objects[0].size, 1u);
  EXPECT_EQ(objects[2].key, "p/c");
  auto reqs = stub.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].rfind(
                "GET /train-bucket?continuation-token=1ab%2F%2Bc%3D&list-type=2&max-keys=2&prefix=p%2F ", 0),
            0u)
      << reqs[1];
}

TEST(S3ClientStub, UnreachableEndpointIsANetworkError) {
  int port;
  {
    StubHttpServer stub({{200, ""}});
    port = std::stoi(stub.endpoint().substr(stub.endpoint().rfind(':') + 1));
  }  // closed: nothing listens there now
  remote::S3Client client(stub_config("http://127.0.0.1:" + std::to_string(port)));
  try {
    client.get_bytes("train-bucket", "x");
    FAIL() << "expected an error";
  } catch (const remote::S3Error& e) {
    EXPECT_TRUE(e.network);
    EXPECT_EQ(e.http_status, 0);
    EXPECT_NE(std::string(e.what()).find("network error"), std::string::npos) << e.what();
  }
}

TEST(S3SinkStub, UploadFailureIsRecordedNotThrown) {
  StubHttpServer stub({{403, error_xml("AccessDenied", "Access Denied")}});
  auto dir = dreamlora::testing::make_temp_dir("s3-sink-stub");
  CheckpointStore store(dir / "out");
  std::vector<std::string> warnings;
  auto sink =
      std::make_shared<S3Sink>(S3Location::parse("s3://train-bucket/run"), stub_config(stub.endpoint()));
  sink->set_warning_handler([&](const std::string& w) { warnings.push_back(w); });
  store.add_mirror(sink);
  CheckpointContents c;
  c.add_bytes("trainer_state.json", "{}");
  EXPECT_NO_THROW(store.commit(3, c));
  ASSERT_EQ(sink->failures().size(), 1u);
  EXPECT_EQ(sink->failures()[0].http_status, 403);
  EXPECT_EQ(sink->failures()[0].s3_code, "AccessDenied");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("upload of checkpoint 3 failed"), std::string::npos) << warnings[0];
  EXPECT_NE(sink->summary().find("NOT in s3://train-bucket/run"), std::string::npos) << sink->summary();
  EXPECT_TRUE(verify_checkpoint(dir / "out" / "checkpoint-3").ok);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::checkpoint
