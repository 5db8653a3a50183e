// Polling of AWS IMDSv2 spot/instance-action, GCP instance/preempted, Azure Scheduled Events or any
// URL with libcurl, on a background thread that hands a notice to options.on_notice.
#include "dreamlora/remote/preemption_watcher.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "dreamlora/common/error.h"
#include "dreamlora/common/strings.h"

namespace dreamlora::remote {

namespace {

constexpr size_t kMaxBody = 64 * 1024;
constexpr size_t kMaxNoticeChars = 300;
constexpr int kAwsTokenTtlSeconds = 21600;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One line for the log and the stop reason: whitespace runs collapsed, long texts cut.
std::string one_line(const std::string& s) {
  std::string out;
  for (char c : trim(s)) {
    const bool space = std::isspace(static_cast<unsigned char>(c));
    if (space && !out.empty() && out.back() == ' ') continue;
    out += space ? ' ' : c;
  }
  if (out.size() > kMaxNoticeChars) out = out.substr(0, kMaxNoticeChars) + "...";
  return out;
}

bool iequals(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string default_base(MetadataProvider p) {
  return p == MetadataProvider::kGcp ? "http://metadata.google.internal" : "http://169.254.169.254";
}

std::optional<std::string> azure_notice(const std::string& body, const std::string& vm_name) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(body);
  } catch (const std::exception& e) {
    fail(str("Azure scheduled events: not JSON (", e.what(), "): ", one_line(body)));
  }
  if (!doc.is_object() || !doc.contains("Events")) return std::nullopt;
  DL_CHECK(doc["Events"].is_array(), "Azure scheduled events: \"Events\" is not an array: ", one_line(body));
  for (const auto& ev : doc["Events"]) {
    if (!ev.is_object() || ev.value("EventType", "") != "Preempt") continue;
    if (!vm_name.empty() && ev.contains("Resources") && ev["Resources"].is_array() &&
        !ev["Resources"].empty()) {
      bool ours = false;
      for (const auto& r : ev["Resources"])
        ours = ours || (r.is_string() && iequals(r.get<std::string>(), vm_name));
      if (!ours) continue;  // an event for another VM of the same availability set / scale set
    }
    return str("Preempt event ", ev.value("EventId", "?"), ", status ", ev.value("EventStatus", "?"),
               ", not before ", ev.value("NotBefore", "?"));
  }
  return std::nullopt;
}

}  // namespace

const char* provider_name(MetadataProvider p) {
  switch (p) {
    case MetadataProvider::kAws:
      return "aws";
    case MetadataProvider::kGcp:
      return "gcp";
    case MetadataProvider::kAzure:
      return "azure";
    case MetadataProvider::kUrl:
      return "url";
  }
  return "?";
}

PreemptionWatcherOptions PreemptionWatcherOptions::parse(const std::string& flag_text) {
  PreemptionWatcherOptions o;
  if (flag_text == "aws") {
    o.provider = MetadataProvider::kAws;
  } else if (flag_text == "gcp") {
    o.provider = MetadataProvider::kGcp;
  } else if (flag_text == "azure") {
    o.provider = MetadataProvider::kAzure;
  } else if (flag_text.rfind("http://", 0) == 0 || flag_text.rfind("https://", 0) == 0) {
    DL_CHECK(flag_text.find_first_of(" \t\r\n") == std::string::npos && flag_text.size() > 8,
             "--watch-preemption: '", flag_text, "' is not a valid URL");
    o.provider = MetadataProvider::kUrl;
    o.url = flag_text;
  } else {
    fail(str("--watch-preemption: '", flag_text, "' is not one of aws, gcp, azure or an http(s):// URL"));
  }
  return o;
}

std::optional<std::string> interpret_metadata_answer(MetadataProvider provider, long status,
                                                     const std::string& body,
                                                     const std::string& azure_vm_name) {
  const std::string text = trim(body);
  switch (provider) {
    case MetadataProvider::kAws:  // 404 until AWS schedules the stop; then {"action":..., "time":...}
      if (status == 404) return std::nullopt;
      DL_CHECK(status == 200, "HTTP ", status, ": ", one_line(body));
      if (text.empty()) return std::nullopt;
      return one_line(text);
    case MetadataProvider::kGcp:  // "FALSE", then "TRUE" about 30 s before the stop
      DL_CHECK(status == 200, "HTTP ", status, ": ", one_line(body));
      if (text == "FALSE") return std::nullopt;
      DL_CHECK(text == "TRUE", "expected TRUE or FALSE, got '", one_line(body), "'");
      return std::string("instance/preempted = TRUE");
    case MetadataProvider::kAzure:
      DL_CHECK(status == 200, "HTTP ", status, ": ", one_line(body));
      return azure_notice(body, azure_vm_name);
    case MetadataProvider::kUrl:
      if (status == 404 || status == 204) return std::nullopt;
      DL_CHECK(status == 200, "HTTP ", status, ": ", one_line(body));
      if (text.empty()) return std::nullopt;
      return one_line(text);
  }
  return std::nullopt;
}

// --- libcurl ------------------------------------------------------------------------------------

struct PreemptionWatcher::Http {
  struct Answer {
    long status = 0;
    std::string body;
  };

  explicit Http(const std::atomic<bool>& stopping) : stopping_(stopping), curl_(curl_easy_init()) {
    DL_CHECK(curl_ != nullptr, "--watch-preemption: curl_easy_init failed");
  }
  ~Http() { curl_easy_cleanup(curl_); }

  // Throws Error (naming the URL) when no HTTP answer came: refused, timed out, aborted.
  Answer request(const std::string& method, const std::string& url, const std::vector<std::string>& headers,
                 double connect_timeout_s, double timeout_s) {
    curl_easy_reset(curl_);
    Answer answer;
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_slist* list = nullptr;
    for (const auto& h : headers) list = curl_slist_append(list, h.c_str());
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    if (method != "GET") curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, method.c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM from a background thread
    // Metadata services and node agents are local: an http_proxy from the environment must not
    // carry the request elsewhere.
    curl_easy_setopt(curl_, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(connect_timeout_s * 1000));
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_s * 1000));
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &Http::on_data);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &answer.body);
    // Lets the destructor abort a request in flight instead of waiting for its timeout.
    curl_easy_setopt(curl_, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl_, CURLOPT_XFERINFOFUNCTION, &Http::on_progress);
    curl_easy_setopt(curl_, CURLOPT_XFERINFODATA, this);
    const CURLcode rc = curl_easy_perform(curl_);
    curl_slist_free_all(list);
    DL_CHECK(rc == CURLE_OK, method, " ", url, ": ", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &answer.status);
    return answer;
  }

 private:
  static size_t on_data(char* data, size_t size, size_t n, void* user) {
    auto* body = static_cast<std::string*>(user);
    const size_t bytes = size * n;
    if (body->size() + bytes > kMaxBody) return 0;  // not a metadata answer: abort
    body->append(data, bytes);
    return bytes;
  }
  static int on_progress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    return static_cast<Http*>(self)->stopping_.load() ? 1 : 0;
  }

  const std::atomic<bool>& stopping_;
  CURL* curl_;
};

// --- the watcher --------------------------------------------------------------------------------

PreemptionWatcher::PreemptionWatcher(PreemptionWatcherOptions options) : options_(std::move(options)) {
  static std::once_flag curl_once;
  std::call_once(curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (options_.poll_interval_s <= 0) {
    switch (options_.provider) {
      case MetadataProvider::kAws:
        options_.poll_interval_s = 5;
        break;                      // AWS gives two minutes' notice
      case MetadataProvider::kGcp:  // GCP and Azure about 30 s
      case MetadataProvider::kAzure:
        options_.poll_interval_s = 1;
        break;
      case MetadataProvider::kUrl:
        options_.poll_interval_s = 2;
        break;
    }
  }
  base_ = options_.base_url;
  if (base_.empty()) {
    const char* env = std::getenv("DREAMLORA_METADATA_BASE");
    base_ = env && *env ? env : default_base(options_.provider);
  }
  while (!base_.empty() && base_.back() == '/') base_.pop_back();
  const std::string what = options_.provider == MetadataProvider::kUrl ? options_.url : base_;
  log(str("watching for preemption notices (", provider_name(options_.provider), ", ", what, ") every ",
          options_.poll_interval_s, " s"));
  thread_ = std::thread([this] { run(); });
}

PreemptionWatcher::~PreemptionWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string PreemptionWatcher::notice_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  return notice_;
}

void PreemptionWatcher::log(const std::string& line) const {
  if (options_.log)
    options_.log(line);
  else
    std::cerr << "dreamlora: " << line << std::endl;
}

bool PreemptionWatcher::sleep_for(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stopping_.load(); });
  return !stopping_.load();
}

void PreemptionWatcher::on_failure(const std::string& what) {
  if (warned_ || stopping_.load()) return;
  warned_ = true;
  log(str("warning: preemption watcher (", provider_name(options_.provider), "): ", what,
          "; polling on quietly, no notice can be seen while this lasts"));
}

void PreemptionWatcher::run() {
  try {
    Http http(stopping_);
    if (options_.provider == MetadataProvider::kAzure) {
      try {  // the VM's own name, to ignore events of other VMs in the same scale set
        auto a =
            http.request("GET", base_ + "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                         {"Metadata: true"}, options_.connect_timeout_s, options_.request_timeout_s);
        if (a.status == 200) azure_vm_name_ = trim(a.body);
      } catch (const Error&) {
      }
    }
    while (!stopping_.load()) {
      std::optional<std::string> notice;
      try {
        notice = poll_once(http);
      } catch (const std::exception& e) {
        on_failure(e.what());
      }
      ++polls_;
      if (notice && !stopping_.load()) {
        const std::string reason =
            str("preemption notice from ", provider_name(options_.provider), ": ", *notice);
        {
          std::lock_guard<std::mutex> lock(mu_);
          notice_ = *notice;
        }
        noticed_ = true;
        log(reason + "; finishing this step, writing a checkpoint and exiting");
        if (options_.on_notice) options_.on_notice(reason);
        return;  // one notice is all it takes
      }
      if (!sleep_for(options_.poll_interval_s)) return;
    }
  } catch (const std::exception& e) {
    log(str("warning: preemption watcher stopped: ", e.what()));
  }
}

std::optional<std::string> PreemptionWatcher::poll_once(Http& http) {
  const double ct = options_.connect_timeout_s, tt = options_.request_timeout_s;
  switch (options_.provider) {
    case MetadataProvider::kGcp: {
      auto a = http.request("GET", base_ + "/computeMetadata/v1/instance/preempted",
                            {"Metadata-Flavor: Google"}, ct, tt);
      return interpret_metadata_answer(options_.provider, a.status, a.body);
    }
    case MetadataProvider::kAzure: {
      const double t = azure_first_ ? std::max(tt, options_.azure_first_request_timeout_s) : tt;
      auto a = http.request("GET", base_ + "/metadata/scheduledevents?api-version=2020-07-01",
                            {"Metadata: true"}, ct, t);
      azure_first_ = false;
      return interpret_metadata_answer(options_.provider, a.status, a.body, azure_vm_name_);
    }
    case MetadataProvider::kUrl: {
      auto a = http.request("GET", options_.url, {}, ct, tt);
      return interpret_metadata_answer(options_.provider, a.status, a.body);
    }
    case MetadataProvider::kAws:
      break;
  }
  // AWS IMDSv2: a session token from PUT, then the GET with it. Where the PUT gets no answer (IMDSv2
  // hop limit 1 seen from a container) but a plain GET works, IMDSv1 is used from then on.
  const std::string action_url = base_ + "/latest/meta-data/spot/instance-action";
  for (int attempt = 0;; ++attempt) {
    if (!aws_token_unavailable_ && (aws_token_.empty() || now_seconds() >= aws_token_expires_)) {
      aws_token_.clear();
      std::string put_error;
      try {
        auto t = http.request("PUT", base_ + "/latest/api/token",
                              {str("X-aws-ec2-metadata-token-ttl-seconds: ", kAwsTokenTtlSeconds)}, ct, tt);
        if (t.status == 200 && !trim(t.body).empty()) {
          aws_token_ = trim(t.body);
          aws_token_expires_ = now_seconds() + kAwsTokenTtlSeconds - 60;
        } else {
          put_error = str("PUT ", base_, "/latest/api/token: HTTP ", t.status);
        }
      } catch (const Error& e) {
        put_error = e.what();
      }
      if (aws_token_.empty()) {
        Http::Answer v1;
        try {
          v1 = http.request("GET", action_url, {}, ct, tt);
        } catch (const Error&) {
          fail(put_error);
        }
        if (v1.status != 200 && v1.status != 404) fail(put_error);
        aws_token_unavailable_ = true;
        log(str("preemption watcher (aws): no IMDSv2 token (", put_error, "); using IMDSv1"));
        return interpret_metadata_answer(options_.provider, v1.status, v1.body);
      }
    }
    std::vector<std::string> headers;
    if (!aws_token_.empty()) headers.push_back("X-aws-ec2-metadata-token: " + aws_token_);
    auto a = http.request("GET", action_url, headers, ct, tt);
    if (a.status == 401 && !aws_token_.empty()) {
      aws_token_.clear();  // expired or revoked: one retry with a new token
      if (attempt == 0) continue;
    }
    return interpret_metadata_answer(options_.provider, a.status, a.body);
  }
}

}  // namespace dreamlora::remote
