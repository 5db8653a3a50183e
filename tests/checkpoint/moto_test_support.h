// A moto S3 server (Python, from build/pyenv: scripts/install-python-clients.sh) that verifies SigV4
// signatures, unlike s3rver: started on a free loopback port with IAM authentication enforced after
// tests/checkpoint/moto_setup.py has created a user, its key and the bucket. Skipped when the venv is
// missing, a failure under CI=true.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include "dreamlora/remote/s3_client.h"
#include "s3_test_support.h"
#include "test_util.h"

namespace dreamlora::checkpoint::testing {

// $DREAMLORA_PYENV, else <source>/build/pyenv; empty when it has no moto_server.
inline std::filesystem::path find_python_clients_venv() {
  std::filesystem::path venv = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "build" / "pyenv";
  if (const char* env = std::getenv("DREAMLORA_PYENV"); env && *env) venv = env;
  return ::access((venv / "bin" / "moto_server").c_str(), X_OK) == 0 ? venv : std::filesystem::path();
}

inline bool loopback_port_accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

class MotoServer {
 public:
  static constexpr const char* kBucket = "moto-bucket";

  explicit MotoServer(std::filesystem::path venv) : venv_(std::move(venv)) {}
  ~MotoServer() { stop(); }

  // Starts moto_server, waits until it listens, creates the IAM user, key and bucket.
  bool start() {
    port_ = ::dreamlora::testing::free_loopback_port();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test process
      std::freopen("/dev/null", "w", stdout);
      std::freopen("/dev/null", "w", stderr);
      ::setenv("INITIAL_NO_AUTH_ACTION_COUNT", "4", 1);  // = the calls of moto_setup.py
      const std::string bin = (venv_ / "bin" / "moto_server").string(), p = std::to_string(port_);
      ::execl(bin.c_str(), bin.c_str(), "-H", "127.0.0.1", "-p", p.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!loopback_port_accepts(port_)) {
      if (std::chrono::steady_clock::now() > deadline) return fail_with("moto_server did not listen in 60 s");
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return fail_with("moto_server exited at start-up");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const std::string cmd = (venv_ / "bin" / "python").string() + " " + DREAMLORA_SOURCE_DIR +
                            "/tests/checkpoint/moto_setup.py " + endpoint() + " " + kBucket + " 2>&1";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    if (!pipe) return fail_with("cannot run moto_setup.py");
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, pipe)) out += buf;
    if (::pclose(pipe) != 0) return fail_with("moto_setup.py failed: " + out);
    std::istringstream(out) >> key_id_ >> secret_;
    return !key_id_.empty() && !secret_.empty() ? true : fail_with("moto_setup.py printed: " + out);
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& error() const { return error_; }
  const std::string& key_id() const { return key_id_; }

  remote::S3Config config() const {
    auto c = local_s3_config(endpoint(), key_id_, secret_, /*max_attempts=*/2);
    c.region = "us-east-1";
    return c;
  }

 private:
  bool fail_with(const std::string& e) {
    error_ = e;
    stop();
    return false;
  }
  std::filesystem::path venv_;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string key_id_, secret_, error_;
};

// Skips (or, under CI=true, fails) the test when build/pyenv has no moto; else sets `var` to the venv.
#define REQUIRE_MOTO(var)                                                                   \
  std::filesystem::path var = ::dreamlora::checkpoint::testing::find_python_clients_venv(); \
  do {                                                                                      \
    if (var.empty()) {                                                                      \
      if (::dreamlora::testing::running_in_ci())                                            \
        FAIL() << "moto not installed under CI (run scripts/install-python-clients.sh)";    \
      GTEST_SKIP() << "moto not installed in build/pyenv or $DREAMLORA_PYENV "              \
                      "(scripts/install-python-clients.sh); SigV4 tests skipped";           \
    }                                                                                       \
  } while (0)

}  // namespace dreamlora::checkpoint::testing
