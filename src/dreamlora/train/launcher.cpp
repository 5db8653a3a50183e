#include "dreamlora/train/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "dreamlora/common/error.h"

namespace dreamlora {

namespace {

std::atomic<int> g_forward_signal{0};
void remember_signal(int sig) { g_forward_signal.store(sig); }

int exit_status_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

}  // namespace

int free_loopback_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  DL_CHECK(fd >= 0, "launch: cannot create a socket: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    fail(str("launch: cannot find a free loopback port: ", std::strerror(errno)));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

int launch_workers(const std::string& executable, const std::vector<std::string>& args, const LaunchOptions& o) {
  DL_CHECK(o.nproc_per_node >= 1, "--nproc-per-node must be at least 1, got ", o.nproc_per_node);
  DL_CHECK(!args.empty(), "launch: give the worker command after --, e.g. `dreamlora launch --nproc-per-node 2 -- train ...`");
  const int port = o.master_port > 0 ? o.master_port : free_loopback_port();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < o.nproc_per_node; ++rank) {
    pid_t pid = fork();
    DL_CHECK(pid >= 0, "launch: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
      setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> argv{const_cast<char*>(executable.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(executable.c_str(), argv.data());
      std::perror("launch: exec");
      _exit(127);
    }
    pids.push_back(pid);
    std::cerr << "dreamlora launch: worker " << rank << " pid " << pid << std::endl;
  }
  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::vector<int> status(pids.size(), -1);
  size_t running = pids.size();
  int first_failure = 0;
  auto kill_all = [&](int sig) {
    for (size_t i = 0; i < pids.size(); ++i)
      if (status[i] < 0) kill(pids[i], sig);
  };
  std::chrono::steady_clock::time_point kill_deadline{};
  while (running > 0) {
    if (int sig = g_forward_signal.exchange(0)) kill_all(sig);
    int ws = 0;
    pid_t done = waitpid(-1, &ws, WNOHANG);
    if (done > 0) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (pids[i] != done) continue;
        status[i] = exit_status_of(ws);
        --running;
        // 0 (finished) and 75 (stopped with a checkpoint) are orderly; anything else fails the job.
        if (status[i] != 0 && status[i] != 75 && first_failure == 0) {
          first_failure = status[i];
          std::cerr << "dreamlora launch: worker " << i << " exited with status " << status[i]
                    << "; stopping the others" << std::endl;
          kill_all(SIGTERM);
          kill_deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(o.grace_seconds * 1000));
        }
      }
      continue;
    }
    if (first_failure != 0 && std::chrono::steady_clock::now() > kill_deadline) kill_all(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (first_failure != 0) return first_failure;
  for (int s : status)
    if (s != 0) return s;
  return 0;
}

}  // namespace dreamlora
