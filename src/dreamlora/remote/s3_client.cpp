// S3Client: requests built in canonical form (curl 7.88 signs the path and query exactly as sent, so
// the query is sorted and encoded here), SigV4 by libcurl, XML bodies parsed with tinyxml2.
#include "dreamlora/remote/s3_client.h"

#include <curl/curl.h>
#include <tinyxml2.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "dreamlora/common/strings.h"

namespace dreamlora::remote {

namespace fs = std::filesystem;

namespace {

constexpr const char* kEmptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr size_t kMaxErrorBody = 64 * 1024;

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// The [profile] section of an AWS shared credentials file as key → value.
std::map<std::string, std::string> read_credentials_profile(const fs::path& file,
                                                            const std::string& profile) {
  std::map<std::string, std::string> out;
  std::ifstream in(file);
  std::string line, section;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const auto eq = line.find('=');
    if (section == profile && eq != std::string::npos)
      out[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return out;
}

void load_credentials(S3Config& c) {
  c.access_key_id = env_or("AWS_ACCESS_KEY_ID");
  c.secret_access_key = env_or("AWS_SECRET_ACCESS_KEY");
  c.session_token = env_or("AWS_SESSION_TOKEN");
  if (!c.access_key_id.empty() || !c.secret_access_key.empty()) {
    DL_CHECK(!c.access_key_id.empty() && !c.secret_access_key.empty(),
             "S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (only ",
             c.access_key_id.empty() ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID", " is set)");
    return;
  }
  const std::string profile = env_or("AWS_PROFILE", "default");
  fs::path file = env_or("AWS_SHARED_CREDENTIALS_FILE");
  if (file.empty() && std::getenv("HOME")) file = fs::path(std::getenv("HOME")) / ".aws" / "credentials";
  std::map<std::string, std::string> p;
  if (!file.empty() && fs::exists(file)) p = read_credentials_profile(file, profile);
  c.access_key_id = p["aws_access_key_id"];
  c.secret_access_key = p["aws_secret_access_key"];
  c.session_token = p["aws_session_token"];
  DL_CHECK(!c.access_key_id.empty() && !c.secret_access_key.empty(),
           "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
           "temporary credentials), or put aws_access_key_id / aws_secret_access_key in the [",
           profile, "] section of ", file.empty() ? std::string("~/.aws/credentials") : file.string(),
           " (AWS_PROFILE selects the section)");
}

void ensure_curl_global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool retryable_status(long status, const std::string& code) {
  if (status == 408 || status == 429 || status >= 500) return true;
  return code == "SlowDown" || code == "RequestTimeout" || code == "InternalError" ||
         code == "ServiceUnavailable";
}

bool retryable_curl(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_READ_ERROR:   // local file
    case CURLE_WRITE_ERROR:  // local disk
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_OUT_OF_MEMORY:
      return false;
    default:
      return true;
  }
}

// What to do about a status + S3 code, for the message.
std::string hint_for(long status, const std::string& code, const std::string& key_id) {
  const std::string key = " (access key id " + key_id + ")";
  if (code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "InvalidToken" ||
      code == "ExpiredToken" || code == "TokenRefreshRequired")
    return " — the credentials" + key +
           " are wrong or expired: check AWS_ACCESS_KEY_ID / "
           "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or the AWS_PROFILE section of ~/.aws/credentials";
  if (code == "AccessDenied" || (status == 403 && code.empty()))
    return " — the credentials" + key +
           " are wrong, or not allowed to do this: see docs/MIRROR.md for the "
           "bucket policy (s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject, "
           "s3:AbortMultipartUpload)";
  if (code == "RequestTimeTooSkewed") return " — this machine's clock is off: synchronise it (NTP)";
  if (code == "NoSuchBucket")
    return " — the bucket does not exist: create it, or fix the bucket name in --mirror";
  if (code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || status == 301)
    return " — the bucket is in another region: set AWS_REGION to the bucket's region";
  return "";
}

struct ParsedError {
  std::string code, message;
};

ParsedError parse_error_body(const std::string& body) {
  ParsedError e;
  tinyxml2::XMLDocument doc;
  if (body.empty() || doc.Parse(body.data(), body.size()) != tinyxml2::XML_SUCCESS) return e;
  const tinyxml2::XMLElement* root = doc.RootElement();
  if (!root || std::string(root->Name()) != "Error") return e;
  if (auto* c = root->FirstChildElement("Code"); c && c->GetText()) e.code = c->GetText();
  if (auto* m = root->FirstChildElement("Message"); m && m->GetText()) e.message = m->GetText();
  return e;
}

std::string child_text(const tinyxml2::XMLElement* parent, const char* name) {
  const tinyxml2::XMLElement* e = parent ? parent->FirstChildElement(name) : nullptr;
  return e && e->GetText() ? e->GetText() : "";
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

}  // namespace

std::string s3_uri_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char ch : s) {
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
        ch == '_' || ch == '.' || ch == '~' || (keep_slash && ch == '/')) {
      out += static_cast<char>(ch);
    } else {
      out += '%';
      out += hex[ch >> 4];
      out += hex[ch & 15];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// S3Config

S3Config S3Config::from_environment(const std::string& endpoint_flag) {
  S3Config c;
  c.endpoint =
      !endpoint_flag.empty() ? endpoint_flag : env_or("AWS_ENDPOINT_URL_S3", env_or("AWS_ENDPOINT_URL"));
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  if (!c.endpoint.empty())
    DL_CHECK(c.endpoint.rfind("http://", 0) == 0 || c.endpoint.rfind("https://", 0) == 0,
             "--s3-endpoint / AWS_ENDPOINT_URL '", c.endpoint,
             "': expected http://host[:port] or https://host[:port]");
  c.region = env_or("AWS_REGION", env_or("AWS_DEFAULT_REGION", "us-east-1"));
  const std::string force = env_or("AWS_S3_FORCE_PATH_STYLE");
  c.path_style = !c.endpoint.empty() || force == "true" || force == "1";
  load_credentials(c);
  return c;
}

std::string S3Config::describe() const {
  return str("endpoint ", endpoint.empty() ? str("https://s3.", region, ".amazonaws.com") : endpoint,
             ", region ", region);
}

// ---------------------------------------------------------------------------------------------------
// Requests

struct S3Client::Request {
  std::string method;  // GET PUT POST DELETE HEAD
  std::string bucket;
  std::string key;  // empty for bucket-level requests
  std::map<std::string, std::string> query;
  std::vector<std::string> headers;
  // Body: `body` in memory, or `body_size` bytes of `body_file` from `body_offset`.
  std::string body;
  fs::path body_file;
  uint64_t body_offset = 0;
  uint64_t body_size = 0;
  fs::path out_file;  // a 2xx response body goes here when set
  bool not_found_ok = false;

  std::string what() const { return str(method, " s3://", bucket, key.empty() ? "" : "/", key); }
};

struct S3Client::Response {
  long status = 0;
  std::string body;  // error bodies always; 2xx bodies unless written to out_file
  std::string etag;
  std::string request_id;
  uint64_t content_length = 0;
  CURLcode curl_code = CURLE_OK;
  std::string curl_error;
};

namespace {

struct TransferState {
  const S3Client::Request* request = nullptr;
  S3Client::Response* response = nullptr;
  CURL* curl = nullptr;
  FILE* in = nullptr;
  uint64_t in_remaining = 0;
  size_t mem_offset = 0;
  FILE* out = nullptr;
  bool out_failed = false;
};

size_t read_cb(char* buf, size_t size, size_t n, void* user) {
  auto* st = static_cast<TransferState*>(user);
  const size_t cap = size * n;
  if (st->in) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(cap, st->in_remaining));
    const size_t got = want ? std::fread(buf, 1, want, st->in) : 0;
    if (got < want && std::ferror(st->in)) return CURL_READFUNC_ABORT;
    st->in_remaining -= got;
    return got;
  }
  const std::string& body = st->request->body;
  const size_t want = std::min(cap, body.size() - st->mem_offset);
  std::copy_n(body.data() + st->mem_offset, want, buf);
  st->mem_offset += want;
  return want;
}

size_t write_cb(char* data, size_t size, size_t n, void* user) {
  auto* st = static_cast<TransferState*>(user);
  const size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(st->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 200 && status < 300 && !st->request->out_file.empty()) {
    if (!st->out) {
      st->out = std::fopen(st->request->out_file.c_str(), "wb");
      if (!st->out) {
        st->out_failed = true;
        return 0;
      }
    }
    if (std::fwrite(data, 1, len, st->out) != len) {
      st->out_failed = true;
      return 0;
    }
    return len;
  }
  if (st->response->body.size() < kMaxErrorBody || (status >= 200 && status < 300))
    st->response->body.append(data, len);
  return len;
}

size_t header_cb(char* data, size_t size, size_t n, void* user) {
  auto* st = static_cast<TransferState*>(user);
  const size_t len = size * n;
  std::string line(data, len);
  const auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    if (name == "etag") st->response->etag = trim(line.substr(colon + 1));
    if (name == "x-amz-request-id") st->response->request_id = trim(line.substr(colon + 1));
  }
  return len;
}

}  // namespace

S3Client::S3Client(S3Config config) : config_(std::move(config)) {
  ensure_curl_global_init();
  curl_ = curl_easy_init();
  DL_CHECK(curl_, "S3: curl_easy_init failed");
  DL_CHECK(config_.max_attempts >= 1, "S3: max_attempts must be >= 1");
  DL_CHECK(config_.part_size > 0, "S3: part_size must be > 0");
  if (!config_.endpoint.empty()) config_.path_style = true;
}

S3Client::~S3Client() {
  if (curl_) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

S3Client::Response S3Client::perform_once(const Request& rq) const {
  // URL: path-style (endpoint/bucket/key) or virtual-hosted (bucket.s3.region.amazonaws.com/key).
  // Buckets with dots break TLS host matching in virtual-hosted form, so they go path-style.
  const bool path_style = config_.path_style || rq.bucket.find('.') != std::string::npos;
  std::string base =
      config_.endpoint.empty() ? str("https://s3.", config_.region, ".amazonaws.com") : config_.endpoint;
  std::string path;
  if (path_style) {
    path = "/" + s3_uri_encode(rq.bucket, false) + (rq.key.empty() ? "" : "/" + s3_uri_encode(rq.key, true));
  } else {
    const auto scheme_end = base.find("://") + 3;
    base.insert(scheme_end, rq.bucket + ".");
    path = "/" + s3_uri_encode(rq.key, true);
  }
  std::string query;
  for (const auto& [k, v] : rq.query)  // std::map: sorted by name, as SigV4's canonical query needs
    query += (query.empty() ? "?" : "&") + s3_uri_encode(k, false) + "=" + s3_uri_encode(v, false);
  const std::string url = base + path + query;

  CURL* h = static_cast<CURL*>(curl_);
  curl_easy_reset(h);
  Response resp;
  TransferState st;
  st.request = &rq;
  st.response = &resp;
  st.curl = h;

  curl_slist* headers = nullptr;
  const bool has_body =
      !rq.body_file.empty() || !rq.body.empty() || rq.method == "PUT" || rq.method == "POST";
  headers = curl_slist_append(
      headers, str("x-amz-content-sha256: ", has_body ? "UNSIGNED-PAYLOAD" : kEmptySha256).c_str());
  if (!config_.session_token.empty())
    headers = curl_slist_append(headers, ("x-amz-security-token: " + config_.session_token).c_str());
  for (const auto& hd : rq.headers) headers = curl_slist_append(headers, hd.c_str());

  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  const std::string sigv4 = "aws:amz:" + config_.region + ":s3";
  curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
  curl_easy_setopt(h, CURLOPT_USERNAME, config_.access_key_id.c_str());
  curl_easy_setopt(h, CURLOPT_PASSWORD, config_.secret_access_key.c_str());
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, config_.connect_timeout_s);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, config_.low_speed_time_s);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &st);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);

  if (rq.method == "PUT") {
    if (!rq.body_file.empty()) {
      st.in = std::fopen(rq.body_file.c_str(), "rb");
      if (!st.in || ::fseeko(st.in, static_cast<off_t>(rq.body_offset), SEEK_SET) != 0) {
        if (st.in) std::fclose(st.in);
        curl_slist_free_all(headers);
        fail(str("S3 ", rq.what(), ": cannot read ", rq.body_file.string()));
      }
      st.in_remaining = rq.body_size;
    }
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(h, CURLOPT_READDATA, &st);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(rq.body_file.empty() ? rq.body.size() : rq.body_size));
  } else if (rq.method == "POST") {
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, rq.body.c_str());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(rq.body.size()));
  } else if (rq.method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (rq.method == "DELETE") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
  }

  resp.curl_code = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp.status);
  curl_off_t cl = -1;
  curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  resp.content_length = cl > 0 ? static_cast<uint64_t>(cl) : 0;
  if (resp.curl_code != CURLE_OK) resp.curl_error = errbuf[0] ? errbuf : curl_easy_strerror(resp.curl_code);
  if (st.out_failed) {
    resp.curl_code = CURLE_WRITE_ERROR;
    resp.curl_error = str("cannot write ", rq.out_file.string());
  }
  if (st.in) std::fclose(st.in);
  if (st.out && std::fclose(st.out) != 0 && resp.curl_code == CURLE_OK) {
    resp.curl_code = CURLE_WRITE_ERROR;
    resp.curl_error = str("cannot write ", rq.out_file.string());
  }
  // A 2xx GET whose body was empty never opened the output file; the object is empty.
  if (resp.curl_code == CURLE_OK && resp.status >= 200 && resp.status < 300 && !rq.out_file.empty() &&
      !st.out)
    std::ofstream(rq.out_file, std::ios::binary | std::ios::trunc);
  curl_slist_free_all(headers);
  return resp;
}

S3Client::Response S3Client::perform(const Request& rq) const {
  std::lock_guard<std::mutex> lock(mutex_);
  static thread_local std::mt19937 rng{std::random_device{}()};
  for (int attempt = 1;; ++attempt) {
    Response r = perform_once(rq);
    const bool network = r.curl_code != CURLE_OK;
    ParsedError pe;
    bool retry = false;
    if (network) {
      retry = retryable_curl(r.curl_code);
    } else if (r.status >= 200 && r.status < 300) {
      return r;
    } else {
      pe = parse_error_body(r.body);
      // A missing object is an answer; a missing bucket is not.
      if (r.status == 404 && rq.not_found_ok && pe.code != "NoSuchBucket") return r;
      retry = retryable_status(r.status, pe.code);
    }
    if (!retry || attempt >= config_.max_attempts) {
      const std::string attempts = str(" (after ", attempt, attempt == 1 ? " attempt)" : " attempts)");
      if (network)
        throw S3Error(str("S3 ", rq.what(), ": network error talking to ", config_.describe(), ": ",
                          r.curl_error, attempts),
                      0, "", true);
      std::string code = pe.code;
      if (code.empty() && r.status == 404 && rq.method == "HEAD") code = "NotFound";
      throw S3Error(
          str("S3 ", rq.what(), ": HTTP ", r.status, code.empty() ? "" : " ", code,
              pe.message.empty() ? "" : ": ", pe.message, hint_for(r.status, code, config_.access_key_id),
              r.request_id.empty() ? "" : " (request id " + r.request_id + ")", attempts),
          r.status, code, false);
    }
    const double base =
        std::min(config_.backoff_max_s, config_.backoff_initial_s * std::pow(2.0, attempt - 1));
    const double delay = base * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  }
}

// ---------------------------------------------------------------------------------------------------
// Operations

void S3Client::put_bytes(const std::string& bucket, const std::string& key, const std::string& bytes) const {
  Request rq;
  rq.method = "PUT";
  rq.bucket = bucket;
  rq.key = key;
  rq.body = bytes;
  perform(rq);
}

void S3Client::put_file(const std::string& bucket, const std::string& key, const fs::path& file) const {
  std::error_code ec;
  const uint64_t size = fs::file_size(file, ec);
  DL_CHECK(!ec, "S3 PUT s3://", bucket, "/", key, ": cannot read ", file.string(), ": ", ec.message());
  if (size > config_.multipart_threshold) return put_multipart(bucket, key, file, size);
  Request rq;
  rq.method = "PUT";
  rq.bucket = bucket;
  rq.key = key;
  rq.body_file = file;
  rq.body_size = size;
  perform(rq);
}

void S3Client::put_multipart(const std::string& bucket, const std::string& key, const fs::path& file,
                             uint64_t size) const {
  // S3 allows at most 10000 parts: grow the part size for very large files.
  const uint64_t part_size = std::max(config_.part_size, (size + 9999) / 10000);
  Request init;
  init.method = "POST";
  init.bucket = bucket;
  init.key = key;
  init.query = {{"uploads", ""}};
  Response r = perform(init);
  tinyxml2::XMLDocument doc;
  std::string upload_id;
  if (doc.Parse(r.body.data(), r.body.size()) == tinyxml2::XML_SUCCESS)
    upload_id = child_text(doc.RootElement(), "UploadId");
  DL_CHECK(!upload_id.empty(), "S3 ", init.what(), ": no UploadId in the CreateMultipartUpload response");

  try {
    std::string complete = "<CompleteMultipartUpload>";
    int part = 1;
    for (uint64_t offset = 0; offset < size; offset += part_size, ++part) {
      Request rq;
      rq.method = "PUT";
      rq.bucket = bucket;
      rq.key = key;
      rq.query = {{"partNumber", std::to_string(part)}, {"uploadId", upload_id}};
      rq.body_file = file;
      rq.body_offset = offset;
      rq.body_size = std::min(part_size, size - offset);
      Response pr = perform(rq);
      DL_CHECK(!pr.etag.empty(), "S3 ", rq.what(), " part ", part, ": no ETag in the response");
      complete +=
          str("<Part><PartNumber>", part, "</PartNumber><ETag>", xml_escape(pr.etag), "</ETag></Part>");
    }
    complete += "</CompleteMultipartUpload>";
    Request done;
    done.method = "POST";
    done.bucket = bucket;
    done.key = key;
    done.query = {{"uploadId", upload_id}};
    done.headers = {"Content-Type: application/xml"};
    done.body = complete;
    Response cr = perform(done);
    // CompleteMultipartUpload can answer 200 with an <Error> body.
    ParsedError pe = parse_error_body(cr.body);
    if (!pe.code.empty())
      throw S3Error(str("S3 ", done.what(), ": CompleteMultipartUpload failed: ", pe.code, ": ", pe.message),
                    cr.status, pe.code, false);
  } catch (...) {
    try {  // best effort: an abandoned upload keeps billing storage until a lifecycle rule removes it
      Request abort;
      abort.method = "DELETE";
      abort.bucket = bucket;
      abort.key = key;
      abort.query = {{"uploadId", upload_id}};
      std::lock_guard<std::mutex> lock(mutex_);
      perform_once(abort);
    } catch (...) {
    }
    throw;
  }
}

void S3Client::get_to_file(const std::string& bucket, const std::string& key, const fs::path& file) const {
  Request rq;
  rq.method = "GET";
  rq.bucket = bucket;
  rq.key = key;
  rq.out_file = file;
  perform(rq);
}

std::string S3Client::get_bytes(const std::string& bucket, const std::string& key) const {
  Request rq;
  rq.method = "GET";
  rq.bucket = bucket;
  rq.key = key;
  return perform(rq).body;
}

std::optional<std::string> S3Client::get_bytes_if_exists(const std::string& bucket,
                                                         const std::string& key) const {
  Request rq;
  rq.method = "GET";
  rq.bucket = bucket;
  rq.key = key;
  rq.not_found_ok = true;
  Response r = perform(rq);
  if (r.status == 404) return std::nullopt;
  return std::move(r.body);
}

std::optional<S3ObjectInfo> S3Client::head(const std::string& bucket, const std::string& key) const {
  Request rq;
  rq.method = "HEAD";
  rq.bucket = bucket;
  rq.key = key;
  rq.not_found_ok = true;
  Response r = perform(rq);
  if (r.status == 404) return std::nullopt;
  return S3ObjectInfo{key, r.content_length, r.etag};
}

void S3Client::remove(const std::string& bucket, const std::string& key) const {
  Request rq;
  rq.method = "DELETE";
  rq.bucket = bucket;
  rq.key = key;
  rq.not_found_ok = true;
  perform(rq);
}

std::vector<S3ObjectInfo> S3Client::list(const std::string& bucket, const std::string& prefix, int max_keys,
                                         size_t limit) const {
  std::vector<S3ObjectInfo> out;
  std::string token;
  for (;;) {
    Request rq;
    rq.method = "GET";
    rq.bucket = bucket;
    rq.query = {{"list-type", "2"}, {"max-keys", std::to_string(max_keys)}, {"prefix", prefix}};
    if (!token.empty()) rq.query["continuation-token"] = token;
    Response r = perform(rq);
    tinyxml2::XMLDocument doc;
    DL_CHECK(doc.Parse(r.body.data(), r.body.size()) == tinyxml2::XML_SUCCESS && doc.RootElement(), "S3 ",
             rq.what(), " (ListObjectsV2 prefix '", prefix, "'): the response is not XML");
    const tinyxml2::XMLElement* root = doc.RootElement();
    for (auto* c = root->FirstChildElement("Contents"); c; c = c->NextSiblingElement("Contents")) {
      S3ObjectInfo info;
      info.key = child_text(c, "Key");
      info.size = std::strtoull(child_text(c, "Size").c_str(), nullptr, 10);
      info.etag = child_text(c, "ETag");
      out.push_back(std::move(info));
    }
    token = child_text(root, "NextContinuationToken");
    if (out.size() >= limit || child_text(root, "IsTruncated") != "true" || token.empty()) break;
  }
  std::sort(out.begin(), out.end(),
            [](const S3ObjectInfo& a, const S3ObjectInfo& b) { return a.key < b.key; });
  return out;
}

}  // namespace dreamlora::remote
