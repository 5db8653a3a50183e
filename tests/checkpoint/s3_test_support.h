// Helpers for the S3 mirror tests: an s3rver child process on a free loopback port (skipped when
// s3rver is not installed, a failure under CI=true), and a scripted loopback HTTP stub.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dreamlora/remote/s3_client.h"
#include "test_util.h"

namespace dreamlora::checkpoint::testing {

// A path-style S3 client config for a server on this machine, retrying fast.
inline remote::S3Config local_s3_config(const std::string& endpoint, const std::string& key_id,
                                        const std::string& secret, int max_attempts) {
  remote::S3Config c;
  c.endpoint = endpoint;
  c.path_style = true;
  c.access_key_id = key_id;
  c.secret_access_key = secret;
  c.max_attempts = max_attempts;
  c.backoff_initial_s = 0.01;
  c.backoff_max_s = 0.05;
  c.connect_timeout_s = 2;
  return c;
}

// $DREAMLORA_S3RVER, else `s3rver` on PATH; empty when neither exists.
inline std::string find_s3rver() {
  if (const char* env = std::getenv("DREAMLORA_S3RVER"); env && *env) return env;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = dirs.find(':', start);
    const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::filesystem::path candidate = std::filesystem::path(dir.empty() ? "." : dir) / "s3rver";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return "";
}

// One s3rver process serving `data_dir` with bucket `bucket` on 127.0.0.1.
class S3rver {
 public:
  static constexpr const char* kBucket = "test-bucket";
  static constexpr const char* kAccessKey = "S3RVER";  // s3rver's built-in account
  static constexpr const char* kSecretKey = "S3RVER";

  explicit S3rver(std::string binary) : binary_(std::move(binary)) {}
  ~S3rver() { stop(); }

  // Starts on `port` (0: a free one) and waits until it listens. Returns false with `error` set.
  bool start(const std::filesystem::path& data_dir, int port = 0) {
    int fds[2];
    if (::pipe(fds) != 0) return fail_with("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test process
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      const std::string p = std::to_string(port);
      // s3rver 3.7 encrypts ListObjectsV2 continuation tokens with DES, which Node 17+ (OpenSSL 3)
      // only offers from the legacy provider; without it every second page is a 500.
      ::setenv("NODE_OPTIONS", "--openssl-legacy-provider", 1);
      ::execl(binary_.c_str(), binary_.c_str(), "-d", data_dir.c_str(), "-a", "127.0.0.1", "-p", p.c_str(),
              "--silent", "--configure-bucket", kBucket, static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd pfd{fds[0], POLLIN, 0};
      if (::poll(&pfd, 1, 100) <= 0) continue;
      char buf[512];
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      const auto at = out.find("listening on 127.0.0.1:");
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        port_ = std::atoi(out.c_str() + at + std::string("listening on 127.0.0.1:").size());
        ::close(fds[0]);
        return true;
      }
    }
    ::close(fds[0]);
    stop();
    return fail_with("s3rver did not report a listening port; output: " + out);
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& error() const { return error_; }

  remote::S3Config config() const {
    return local_s3_config(endpoint(), kAccessKey, kSecretKey, /*max_attempts=*/2);
  }

 private:
  bool fail_with(const std::string& e) {
    error_ = e;
    return false;
  }
  std::string binary_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string error_;
};

// Skips (or, under CI=true, fails) the test when s3rver is not installed; else sets `var` to the binary.
#define REQUIRE_S3RVER(var)                                                                       \
  std::string var = ::dreamlora::checkpoint::testing::find_s3rver();                              \
  do {                                                                                            \
    if (var.empty()) {                                                                            \
      if (::dreamlora::testing::running_in_ci())                                                  \
        FAIL() << "s3rver not installed under CI (run scripts/install-s3rver.sh)";                \
      GTEST_SKIP() << "s3rver not installed (scripts/install-s3rver.sh); S3 mirror test skipped"; \
    }                                                                                             \
  } while (0)

// A loopback HTTP server answering each request with the next scripted response (the last one
// repeats), recording every request's head. Connection: close after each response.
class StubHttpServer {
 public:
  struct Reply {
    int status = 200;
    std::string body;
  };

  explicit StubHttpServer(std::vector<Reply> replies) : replies_(std::move(replies)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd_, 16);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~StubHttpServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  void serve() {
    size_t next = 0;
    while (!stop_) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 50) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::string head = read_head(c);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(head);
      }
      const Reply& r = replies_[std::min(next++, replies_.size() - 1)];
      const std::string resp =
          "HTTP/1.1 " + std::to_string(r.status) + " Stub\r\nContent-Type: application/xml\r\n" +
          "x-amz-request-id: STUBREQ\r\nContent-Length: " + std::to_string(r.body.size()) +
          "\r\nConnection: close\r\n\r\n" + r.body;
      ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::shutdown(c, SHUT_WR);
      char drain[4096];
      pollfd cp{c, POLLIN, 0};
      while (::poll(&cp, 1, 200) > 0 && ::recv(c, drain, sizeof drain, 0) > 0) {
      }
      ::close(c);
    }
  }

  static std::string read_head(int c) {
    std::string data;
    char buf[4096];
    while (data.find("\r\n\r\n") == std::string::npos) {
      pollfd cp{c, POLLIN, 0};
      if (::poll(&cp, 1, 2000) <= 0) break;
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      data.append(buf, static_cast<size_t>(n));
    }
    return data.substr(0, data.find("\r\n\r\n"));
  }

  std::vector<Reply> replies_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<std::string> requests_;
};

inline remote::S3Config stub_config(const std::string& endpoint) {
  auto c = local_s3_config(endpoint, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                           /*max_attempts=*/3);
  c.backoff_max_s = 0.02;
  return c;
}

}  // namespace dreamlora::checkpoint::testing
