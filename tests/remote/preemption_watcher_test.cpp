// PreemptionWatcher against a loopback HTTP stub: notices from a URL, AWS IMDSv2 (token PUT then GET),
// GCP and Azure (their required headers), an unreachable endpoint, prompt shutdown; answer parsing.
#include "dreamlora/remote/preemption_watcher.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dreamlora/common/error.h"
#include "dreamlora/stop/stop_request.h"
#include "test_util.h"

namespace dreamlora::remote {
namespace {

// --- a tiny HTTP/1.1 server on 127.0.0.1 (ephemeral port): one thread, one request per connection,
// answers from a handler, records every request ---------------------------------------------------

struct StubRequest {
  std::string method, target;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
};

struct StubAnswer {
  int status = 404;
  std::string body;
  bool hang = false;  // never answer (until the server stops)
};

class StubServer {
 public:
  using Handler = std::function<StubAnswer(const StubRequest&, int index)>;  // index: 0-based request count

  explicit StubServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 16) != 0)
      throw std::runtime_error("stub server: cannot listen on 127.0.0.1");
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~StubServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }

  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  std::vector<StubRequest> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(requests_.size());
  }

  // A port nothing listens on (bound, then closed): connections are refused at once.
  static int closed_port() { return ::dreamlora::testing::free_loopback_port(); }

 private:
  bool wait_readable(int fd) {
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10) > 0) return true;
    }
    return false;
  }

  void serve() {
    while (wait_readable(fd_)) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      handle(c);
      ::close(c);
    }
  }

  void handle(int c) {
    std::string raw;
    char buf[4096];
    while (raw.find("\r\n\r\n") == std::string::npos) {
      if (!wait_readable(c)) return;
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      raw.append(buf, static_cast<size_t>(n));
    }
    StubRequest req = parse(raw.substr(0, raw.find("\r\n\r\n")));
    int index;
    {
      std::lock_guard<std::mutex> lock(mu_);
      index = static_cast<int>(requests_.size());
      requests_.push_back(req);
    }
    StubAnswer a = handler_(req, index);
    if (a.hang) {
      while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return;
    }
    std::string out = "HTTP/1.1 " + std::to_string(a.status) +
                      " X\r\nContent-Length: " + std::to_string(a.body.size()) +
                      "\r\nConnection: close\r\n\r\n" + a.body;
    ::send(c, out.data(), out.size(), MSG_NOSIGNAL);
  }

  static StubRequest parse(const std::string& head) {
    StubRequest r;
    size_t eol = head.find("\r\n");
    std::string first = head.substr(0, eol);
    size_t s1 = first.find(' '), s2 = first.find(' ', s1 + 1);
    r.method = first.substr(0, s1);
    r.target = first.substr(s1 + 1, s2 - s1 - 1);
    size_t pos = eol == std::string::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
      size_t end = head.find("\r\n", pos);
      if (end == std::string::npos) end = head.size();
      std::string line = head.substr(pos, end - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        size_t v = line.find_first_not_of(' ', colon + 1);
        r.headers[name] = v == std::string::npos ? "" : line.substr(v);
      }
      pos = end + 2;
    }
    return r;
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<StubRequest> requests_;
  std::thread thread_;
};

// --- helpers ------------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

// Polls pred every 2 ms for up to 10 s (the watchers below poll every 20 ms: this never waits long).
bool wait_until(const std::function<bool()>& pred, double seconds = 10) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

struct LogLines {
  std::mutex mu;
  std::vector<std::string> lines;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& l) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(l);
    };
  }
  int count_containing(const std::string& needle) {
    std::lock_guard<std::mutex> lock(mu);
    int n = 0;
    for (const auto& l : lines) n += l.find(needle) != std::string::npos;
    return n;
  }
};

PreemptionWatcherOptions fast(PreemptionWatcherOptions o, const std::string& base, LogLines& log) {
  o.base_url = base;
  o.poll_interval_s = 0.02;
  o.log = log.sink();
  o.on_notice = [](const std::string& reason) { stop::request_stop(reason); };
  return o;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class PreemptionWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override { stop::reset_stop_for_tests(); }
  void TearDown() override { stop::reset_stop_for_tests(); }
};

// --- behaviour ----------------------------------------------------------------------------------

TEST_F(PreemptionWatcherTest, UrlAnswering200WithABodyAfterThreeEmptyPollsRequestsAStop) {
  StubServer stub([](const StubRequest& r, int i) {
    if (i < 3) return StubAnswer{404, ""};
    return StubAnswer{200, "node draining at 01:02\n"};
  });
  LogLines log;
  auto o = fast(PreemptionWatcherOptions::parse(stub.base() + "/preempt"), "", log);
  PreemptionWatcher w(o);
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_EQ(stop::stop_reason(), stop::StopReason::kRequested);
  EXPECT_TRUE(contains(stop::stop_reason_text(), "preemption notice from url"));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "node draining at 01:02"));
  EXPECT_TRUE(w.notice_seen());
  EXPECT_EQ(w.notice_text(), "node draining at 01:02");
  EXPECT_EQ(stub.requests()[0].target, "/preempt");
  EXPECT_GE(stub.count(), 4);
  EXPECT_EQ(log.count_containing("preemption notice from url: node draining at 01:02"), 1);
}

TEST_F(PreemptionWatcherTest, UrlAnswering200EmptyOr404IsNoNotice) {
  StubServer stub(
      [](const StubRequest&, int i) { return StubAnswer{i % 2 ? 404 : 200, i % 2 ? "gone" : " \n"}; });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse(stub.base() + "/x"), "", log));
  ASSERT_TRUE(wait_until([&] { return w.polls() >= 6; }));
  EXPECT_FALSE(stop::stop_requested());
  EXPECT_FALSE(w.notice_seen());
  EXPECT_EQ(log.count_containing("warning"), 0);
}

TEST_F(PreemptionWatcherTest, AwsGetsAnImdsV2TokenByPutThenPollsInstanceActionWithIt) {
  StubServer stub([](const StubRequest& r, int i) {
    if (r.method == "PUT" && r.target == "/latest/api/token") {
      if (r.header("x-aws-ec2-metadata-token-ttl-seconds").empty()) return StubAnswer{400, "no ttl"};
      return StubAnswer{200, "tok-123"};
    }
    if (r.method == "GET" && r.target == "/latest/meta-data/spot/instance-action") {
      if (r.header("x-aws-ec2-metadata-token") != "tok-123") return StubAnswer{401, ""};
      if (i < 4) return StubAnswer{404, "Not Found"};
      return StubAnswer{200, "{\"action\": \"terminate\", \"time\": \"2026-11-28T01:00:00Z\"}"};
    }
    return StubAnswer{400, "unexpected"};
  });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("aws"), stub.base(), log));
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "preemption notice from aws"));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "\"action\": \"terminate\""));
  auto reqs = stub.requests();
  ASSERT_GE(reqs.size(), 5u);
  EXPECT_EQ(reqs[0].method, "PUT");
  int puts = 0;
  for (const auto& r : reqs) puts += r.method == "PUT";
  EXPECT_EQ(puts, 1) << "the token is reused until it expires";
  EXPECT_EQ(log.count_containing("warning"), 0);
}

TEST_F(PreemptionWatcherTest, AwsRenewsARejectedTokenWithoutAWarning) {
  std::atomic<int> tokens{0};
  StubServer stub([&](const StubRequest& r, int) {
    if (r.method == "PUT") return StubAnswer{200, "tok-" + std::to_string(++tokens)};
    // Only the second token is accepted: the first GET is rejected and must be retried at once.
    if (r.header("x-aws-ec2-metadata-token") != "tok-2") return StubAnswer{401, ""};
    return StubAnswer{200, "{\"action\": \"stop\"}"};
  });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("aws"), stub.base(), log));
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "stop"));
  EXPECT_EQ(tokens.load(), 2);
  EXPECT_EQ(log.count_containing("warning"), 0);
}

TEST_F(PreemptionWatcherTest, AwsFallsBackToImdsV1WhenNoTokenIsGiven) {
  StubServer stub([](const StubRequest& r, int i) {
    if (r.method == "PUT") return StubAnswer{403, "Forbidden"};
    if (!r.header("x-aws-ec2-metadata-token").empty()) return StubAnswer{400, "unexpected token"};
    return i < 4 ? StubAnswer{404, ""} : StubAnswer{200, "{\"action\": \"hibernate\"}"};
  });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("aws"), stub.base(), log));
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "hibernate"));
  EXPECT_EQ(log.count_containing("using IMDSv1"), 1);
  int puts = 0;
  for (const auto& r : stub.requests()) puts += r.method == "PUT";
  EXPECT_EQ(puts, 1);
}

TEST_F(PreemptionWatcherTest, GcpSendsMetadataFlavorAndStopsOnTrue) {
  StubServer stub([](const StubRequest& r, int i) {
    if (r.header("metadata-flavor") != "Google")
      return StubAnswer{400, "Missing Metadata-Flavor:Google header"};
    if (r.target != "/computeMetadata/v1/instance/preempted") return StubAnswer{404, ""};
    return StubAnswer{200, i < 3 ? "FALSE" : "TRUE"};
  });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("gcp"), stub.base(), log));
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "preemption notice from gcp"));
  EXPECT_EQ(stub.count(), 4);
  EXPECT_EQ(log.count_containing("warning"), 0) << "every request carried the header";
}

TEST_F(PreemptionWatcherTest, GcpBaseCanComeFromTheEnvironment) {
  StubServer stub([](const StubRequest& r, int) {
    return r.header("metadata-flavor") == "Google" ? StubAnswer{200, "TRUE"} : StubAnswer{400, ""};
  });
  ::setenv("DREAMLORA_METADATA_BASE", stub.base().c_str(), 1);
  LogLines log;
  auto o = fast(PreemptionWatcherOptions::parse("gcp"), "", log);
  PreemptionWatcher w(o);
  const bool stopped = wait_until([] { return stop::stop_requested(); });
  ::unsetenv("DREAMLORA_METADATA_BASE");
  ASSERT_TRUE(stopped);
  EXPECT_GE(stub.count(), 1);
}

std::string azure_events(const std::string& type, const std::string& vm, const std::string& id) {
  return "{\"DocumentIncarnation\": 3, \"Events\": [{\"EventId\": \"" + id + "\", \"EventType\": \"" + type +
         "\", \"ResourceType\": \"VirtualMachine\", \"Resources\": [\"" + vm +
         "\"], \"EventStatus\": \"Scheduled\", \"NotBefore\": \"Sat, 28 Nov 2026 01:00:30 GMT\"}]}";
}

TEST_F(PreemptionWatcherTest, AzureSendsMetadataTrueAndStopsOnAPreemptEventForThisVm) {
  std::atomic<int> event_polls{0};
  StubServer stub([&](const StubRequest& r, int) {
    if (r.header("metadata") != "true") return StubAnswer{400, "{\"error\": \"Bad request\"}"};
    if (r.target == "/metadata/instance/compute/name?api-version=2021-02-01&format=text")
      return StubAnswer{200, "vm-1"};
    if (r.target != "/metadata/scheduledevents?api-version=2020-07-01") return StubAnswer{404, ""};
    switch (event_polls++) {
      case 0:
        return StubAnswer{200, "{\"DocumentIncarnation\": 1, \"Events\": []}"};
      case 1:
        return StubAnswer{200, azure_events("Freeze", "vm-1", "E-freeze")};
      case 2:
        return StubAnswer{200, azure_events("Preempt", "vm-2", "E-other-vm")};
      default:
        return StubAnswer{200, azure_events("Preempt", "VM-1", "E-ours")};
    }
  });
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("azure"), stub.base(), log));
  ASSERT_TRUE(wait_until([] { return stop::stop_requested(); }));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "preemption notice from azure"));
  EXPECT_TRUE(contains(stop::stop_reason_text(), "E-ours"));
  EXPECT_EQ(event_polls.load(), 4);
  EXPECT_EQ(log.count_containing("warning"), 0);
}

TEST_F(PreemptionWatcherTest, UnreachableEndpointIsOneWarningAndPollingGoesOn) {
  LogLines log;
  PreemptionWatcher w(fast(PreemptionWatcherOptions::parse("gcp"),
                           "http://127.0.0.1:" + std::to_string(StubServer::closed_port()), log));
  ASSERT_TRUE(wait_until([&] { return w.polls() >= 5; }));
  EXPECT_FALSE(stop::stop_requested());
  EXPECT_EQ(log.count_containing("warning"), 1);
  EXPECT_EQ(log.count_containing("127.0.0.1"), 2) << "the start line and the warning name the endpoint";
}

TEST_F(PreemptionWatcherTest, DestructionAbortsARequestInFlightPromptly) {
  StubServer stub([](const StubRequest&, int) {
    StubAnswer a;
    a.hang = true;
    return a;
  });
  LogLines log;
  auto o = fast(PreemptionWatcherOptions::parse(stub.base() + "/hang"), "", log);
  o.request_timeout_s = 60;
  auto w = std::make_unique<PreemptionWatcher>(o);
  ASSERT_TRUE(wait_until([&] { return stub.count() >= 1; }));
  const auto t0 = Clock::now();
  w.reset();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.5);
  EXPECT_FALSE(stop::stop_requested());
}

TEST_F(PreemptionWatcherTest, DestructionDuringTheWaitBetweenPollsIsPrompt) {
  StubServer stub([](const StubRequest&, int) { return StubAnswer{404, ""}; });
  LogLines log;
  auto o = fast(PreemptionWatcherOptions::parse(stub.base() + "/x"), "", log);
  o.poll_interval_s = 600;
  auto w = std::make_unique<PreemptionWatcher>(o);
  ASSERT_TRUE(wait_until([&] { return w->polls() >= 1; }));
  const auto t0 = Clock::now();
  w.reset();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 0.5);
}

// --- parsing ------------------------------------------------------------------------------------

TEST(PreemptionWatcherOptions, ParsesProvidersAndUrlsAndNamesTheFlagOtherwise) {
  EXPECT_EQ(PreemptionWatcherOptions::parse("aws").provider, MetadataProvider::kAws);
  EXPECT_EQ(PreemptionWatcherOptions::parse("gcp").provider, MetadataProvider::kGcp);
  EXPECT_EQ(PreemptionWatcherOptions::parse("azure").provider, MetadataProvider::kAzure);
  auto u = PreemptionWatcherOptions::parse("http://localhost:8080/notice");
  EXPECT_EQ(u.provider, MetadataProvider::kUrl);
  EXPECT_EQ(u.url, "http://localhost:8080/notice");
  for (const char* bad : {"AWS", "ec2", "ftp://x/y", "", "http://a b"}) {
    try {
      PreemptionWatcherOptions::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), "--watch-preemption")) << e.what();
    }
  }
}

TEST(MetadataAnswer, AwsIs404UntilAnInstanceActionDocument) {
  EXPECT_FALSE(interpret_metadata_answer(MetadataProvider::kAws, 404, "Not Found"));
  auto n = interpret_metadata_answer(MetadataProvider::kAws, 200, "{\"action\":\n \"terminate\"}\n");
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, "{\"action\": \"terminate\"}");
  EXPECT_THROW(interpret_metadata_answer(MetadataProvider::kAws, 500, ""), Error);
}

TEST(MetadataAnswer, GcpIsTrueOrFalseAndAnythingElseIsAnError) {
  EXPECT_FALSE(interpret_metadata_answer(MetadataProvider::kGcp, 200, "FALSE"));
  EXPECT_TRUE(interpret_metadata_answer(MetadataProvider::kGcp, 200, "TRUE\n"));
  EXPECT_THROW(interpret_metadata_answer(MetadataProvider::kGcp, 200, "<html>"), Error);
  EXPECT_THROW(interpret_metadata_answer(MetadataProvider::kGcp, 403, "TRUE"), Error);
}

TEST(MetadataAnswer, AzureCountsOnlyPreemptEventsForThisVm) {
  EXPECT_FALSE(
      interpret_metadata_answer(MetadataProvider::kAzure, 200, "{\"DocumentIncarnation\":0,\"Events\":[]}"));
  EXPECT_FALSE(
      interpret_metadata_answer(MetadataProvider::kAzure, 200, azure_events("Reboot", "vm", "E1"), "vm"));
  EXPECT_FALSE(
      interpret_metadata_answer(MetadataProvider::kAzure, 200, azure_events("Preempt", "b", "E1"), "a"));
  EXPECT_TRUE(
      interpret_metadata_answer(MetadataProvider::kAzure, 200, azure_events("Preempt", "b", "E1"), ""));
  auto n = interpret_metadata_answer(MetadataProvider::kAzure, 200, azure_events("Preempt", "a", "E9"), "a");
  ASSERT_TRUE(n);
  EXPECT_TRUE(contains(*n, "E9"));
  EXPECT_TRUE(contains(*n, "Sat, 28 Nov 2026 01:00:30 GMT"));
  EXPECT_THROW(interpret_metadata_answer(MetadataProvider::kAzure, 200, "not json"), Error);
}

TEST(MetadataAnswer, UrlIsANoticeOnlyFor200WithABody) {
  EXPECT_FALSE(interpret_metadata_answer(MetadataProvider::kUrl, 404, "no"));
  EXPECT_FALSE(interpret_metadata_answer(MetadataProvider::kUrl, 204, ""));
  EXPECT_FALSE(interpret_metadata_answer(MetadataProvider::kUrl, 200, "  \n"));
  EXPECT_EQ(interpret_metadata_answer(MetadataProvider::kUrl, 200, "bye").value_or(""), "bye");
  EXPECT_THROW(interpret_metadata_answer(MetadataProvider::kUrl, 503, ""), Error);
}

}  // namespace
}  // namespace dreamlora::remote
