// TEMPORARY (mirror engineer): dumps signed request heads for an offline SigV4 check. Not to be committed.
#include <gtest/gtest.h>

#include <fstream>

#include "checkpoint/s3_test_support.h"

namespace dreamlora::checkpoint {
TEST(SigDump, Dump) {
  if (!std::getenv("SIGDUMP")) GTEST_SKIP();
  testing::StubHttpServer stub({{200, "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"}});
  S3Config c = testing::stub_config(stub.endpoint());
  c.session_token = "FQoGZXIvYXdzEJr//////////wEaDOKEN+/=";
  c.region = "eu-central-1";
  c.max_attempts = 1;
  S3Client client(c);
  try { client.list("my-bucket", "runs/a b+c/checkpoint-", 2); } catch (...) {}
  try { client.put_bytes("my-bucket", "runs/a b+c/checkpoint-1/MANIFEST.json", "{}"); } catch (...) {}
  try { client.head("my-bucket", "runs/x~y/checkpoint-1/f.json"); } catch (...) {}
  try { client.remove("my-bucket", "k"); } catch (...) {}
  try { client.get_bytes("my-bucket", "k=1&2"); } catch (...) {}
  std::ofstream out(std::getenv("SIGDUMP"));
  for (auto& h : stub.requests()) out << h << "\n=====\n";
}
}  // namespace dreamlora::checkpoint
