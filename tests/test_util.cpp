#include "test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

#include "dreamlora/common/error.h"

namespace dreamlora::testing {

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::filesystem::path fixtures_dir() {
  std::filesystem::path dir;
  if (const char* env = std::getenv("DREAMLORA_FIXTURES"))
    dir = env;
  else
    dir = DREAMLORA_FIXTURES_DIR;
  if (std::filesystem::exists(dir / "tiny-sd" / "model_index.json")) return std::filesystem::canonical(dir);
  return {};
}

bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

namespace {

// The folders make_temp_dir made, removed when the test process exits after every test passed (a run of
// the suite used to leave gigabytes under /tmp). Kept after a failure, or with DREAMLORA_KEEP_TEST_DIRS
// set, to look into; never removed by a forked child that returns through exit().
class TempDirRegistry {
 public:
  void add(const std::filesystem::path& dir) {
    std::lock_guard<std::mutex> lock(mutex_);
    dirs_.push_back(dir);
  }
  ~TempDirRegistry() {
    if (getpid() != owner_ || std::getenv("DREAMLORA_KEEP_TEST_DIRS") != nullptr) return;
    if (!::testing::UnitTest::GetInstance()->Passed()) return;
    std::error_code ec;
    for (const auto& dir : dirs_) std::filesystem::remove_all(dir, ec);
  }

 private:
  const pid_t owner_ = getpid();
  std::mutex mutex_;
  std::vector<std::filesystem::path> dirs_;
};

TempDirRegistry& temp_dirs() {
  static TempDirRegistry registry;
  return registry;
}

}  // namespace

std::filesystem::path make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("dreamlora-test-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  temp_dirs().add(dir);
  return dir;
}

std::filesystem::path dreamlora_binary() {
  if (const char* env = std::getenv("DREAMLORA_BIN")) {
    if (std::filesystem::exists(env)) return env;
  }
  return std::filesystem::path(DREAMLORA_BINARY_DIR) / "dreamlora";
}

int spawn_dreamlora(const std::vector<std::string>& args, const std::filesystem::path& output_file,
                    const std::vector<std::string>& env) {
  const std::string bin = dreamlora_binary().string();
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

int wait_process(int pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ProcessResult run_dreamlora(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  auto log = make_temp_dir("proc") / "output.txt";
  ProcessResult r;
  r.exit_status = wait_process(spawn_dreamlora(args, log, env));
  r.output = read_text(log);
  return r;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

}  // namespace dreamlora::testing
