// A small S3 client on libcurl (SigV4 via CURLOPT_AWS_SIGV4): PUT (single or multipart), GET to a
// file, HEAD, DELETE and ListObjectsV2, with retries and errors that carry the HTTP status and S3 code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/common/error.h"

namespace dreamlora::remote {

struct S3Config {
  // Empty: AWS (https://s3.<region>.amazonaws.com, virtual-hosted buckets). Else scheme://host[:port]
  // of an S3-compatible service (MinIO, R2, s3rver...), addressed path-style.
  std::string endpoint;
  std::string region = "us-east-1";
  bool path_style = false;  // always on when `endpoint` is set
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // temporary credentials (STS, instance roles exported by the user)

  int max_attempts = 5;            // per request, counting the first
  double backoff_initial_s = 0.5;  // doubles each retry, with jitter, up to backoff_max_s
  double backoff_max_s = 20.0;
  long connect_timeout_s = 10;
  long low_speed_time_s = 60;  // abort a transfer slower than 1 KiB/s for this long (then retry)
  uint64_t multipart_threshold = 64ull << 20;  // files above this use multipart upload
  uint64_t part_size = 16ull << 20;            // S3 needs >= 5 MiB for all parts but the last

  // Endpoint: `endpoint_flag` (--s3-endpoint), else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL.
  // Region: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1. Path style: endpoint given or
  // AWS_S3_FORCE_PATH_STYLE=true. Credentials: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY
  // (+ AWS_SESSION_TOKEN), else the [$AWS_PROFILE or default] section of $AWS_SHARED_CREDENTIALS_FILE
  // or ~/.aws/credentials. Throws dreamlora::Error naming what is missing (never a secret's value).
  static S3Config from_environment(const std::string& endpoint_flag = "");
  // "endpoint http://127.0.0.1:9000, region us-east-1" — never credentials.
  std::string describe() const;
};

// A failed S3 request. what() reads e.g.
//   "S3 PUT s3://bucket/run/checkpoint-20/MANIFEST.json: HTTP 403 AccessDenied: Access Denied (after 1
//   attempt)"
struct S3Error : Error {
  S3Error(const std::string& message, long http_status, std::string s3_code, bool network)
      : Error(message), http_status(http_status), s3_code(std::move(s3_code)), network(network) {}
  long http_status = 0;  // 0 when no HTTP response arrived
  std::string s3_code;   // <Code> of the error body (NoSuchBucket, AccessDenied, ...), may be empty
  bool network = false;  // connection / timeout / transfer error, no status
};

struct S3ObjectInfo {
  std::string key;
  uint64_t size = 0;
  std::string etag;
};

class S3Client {
 public:
  explicit S3Client(S3Config config);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  const S3Config& config() const { return config_; }

  // Uploads a local file; multipart when it is larger than config().multipart_threshold (an
  // interrupted multipart upload is aborted, best effort).
  void put_file(const std::string& bucket, const std::string& key, const std::filesystem::path& file) const;
  void put_bytes(const std::string& bucket, const std::string& key, const std::string& bytes) const;
  // Writes the object to `file` (created or truncated).
  void get_to_file(const std::string& bucket, const std::string& key,
                   const std::filesystem::path& file) const;
  std::string get_bytes(const std::string& bucket, const std::string& key) const;
  // nullopt when the object does not exist (404 NoSuchKey); a missing bucket and other failures throw.
  std::optional<std::string> get_bytes_if_exists(const std::string& bucket, const std::string& key) const;
  // nullopt when the object does not exist (404; HEAD answers carry no error code, so a missing
  // bucket reads as a missing object here); other failures throw.
  std::optional<S3ObjectInfo> head(const std::string& bucket, const std::string& key) const;
  // Deleting a missing key succeeds (as in S3).
  void remove(const std::string& bucket, const std::string& key) const;
  // Every object whose key starts with `prefix`, in key order; follows continuation tokens.
  // `max_keys` per page (tests use small pages to exercise pagination); stops once `limit` are found.
  std::vector<S3ObjectInfo> list(const std::string& bucket, const std::string& prefix, int max_keys = 1000,
                                 size_t limit = SIZE_MAX) const;

  struct Response;  // internal
  struct Request;   // internal

 private:
  Response perform(const Request& request) const;
  Response perform_once(const Request& request) const;
  void put_multipart(const std::string& bucket, const std::string& key, const std::filesystem::path& file,
                     uint64_t size) const;

  S3Config config_;
  mutable std::mutex mutex_;  // one request at a time on the shared curl handle (connection reuse)
  void* curl_ = nullptr;      // CURL*
};

// S3's URI encoding (RFC 3986 unreserved characters kept); '/' kept when `keep_slash`.
std::string s3_uri_encode(const std::string& s, bool keep_slash);

}  // namespace dreamlora::remote
