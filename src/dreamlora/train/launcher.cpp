#include "dreamlora/train/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

namespace {

std::atomic<int> g_forward_signal{0};
void remember_signal(int sig) {
  g_forward_signal.store(sig);
}

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

namespace {

// The worker's side of fork(): its own process group, so that a terminal's Ctrl-C (sent to the
// foreground group) reaches only the launcher, which forwards it once; a worker that also got it from the
// terminal would count the forwarded copy as a second SIGINT and exit 130 without a checkpoint. Being out
// of the launcher's group, it is told by the kernel when the launcher dies.
// Only async-signal-safe calls here: argv and envp are built before fork().
[[noreturn]] void exec_worker(const char* executable, char* const* argv, char* const* envp, pid_t launcher) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != launcher) _exit(143);  // the launcher died before prctl took effect
  execve(executable, argv, envp);
  static const char message[] = "dreamlora launch: exec of the worker failed\n";
  (void)!write(2, message, sizeof(message) - 1);
  _exit(127);
}

// This process's environment with the torchrun variables of one worker set.
std::vector<std::string> worker_environment(const std::vector<std::pair<std::string, std::string>>& vars) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& v : vars) replaced = replaced || v.first == name;
    if (!replaced) env.push_back(entry);
  }
  for (const auto& [name, value] : vars) env.push_back(name + "=" + value);
  return env;
}

std::vector<char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (const auto& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

int launch_workers(const std::string& executable, const std::vector<std::string>& args,
                   const LaunchOptions& o) {
  DL_CHECK(o.nproc_per_node >= 1, "--nproc-per-node must be at least 1, got ", o.nproc_per_node);
  DL_CHECK(o.nnodes >= 1, "--nnodes must be at least 1, got ", o.nnodes);
  DL_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes, "--node-rank ", o.node_rank,
           " must be in [0, --nnodes ", o.nnodes, ")");
  DL_CHECK(
      !args.empty(),
      "launch: give the worker command after --, e.g. `dreamlora launch --nproc-per-node 2 -- train ...`");
  const int port = o.master_port > 0 ? o.master_port : o.nnodes > 1 ? 29500 : free_loopback_port();
  const int world_size = o.nnodes * o.nproc_per_node;
  // Handlers before the first fork: a signal during start-up is forwarded, not fatal to the launcher.
  struct sigaction sa{};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  const pid_t launcher = getpid();
  std::vector<pid_t> pids;
  for (int local_rank = 0; local_rank < o.nproc_per_node; ++local_rank) {
    const int rank = o.node_rank * o.nproc_per_node + local_rank;
    const auto env = worker_environment({{"RANK", std::to_string(rank)},
                                         {"LOCAL_RANK", std::to_string(local_rank)},
                                         {"WORLD_SIZE", std::to_string(world_size)},
                                         {"LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node)},
                                         {"GROUP_RANK", std::to_string(o.node_rank)},
                                         {"MASTER_ADDR", o.master_addr},
                                         {"MASTER_PORT", std::to_string(port)}});
    std::vector<std::string> argv_strings{executable};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    auto argv = c_strings(argv_strings), envp = c_strings(env);
    pid_t pid = fork();
    DL_CHECK(pid >= 0, "launch: fork failed: ", std::strerror(errno));
    if (pid == 0) exec_worker(executable.c_str(), argv.data(), envp.data(), launcher);
    setpgid(pid, pid);  // also here, so that no signal can reach the child before it has its own group
    pids.push_back(pid);
    std::cerr << "dreamlora launch: worker " << rank << " pid " << pid << std::endl;
  }

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
          std::cerr << "dreamlora launch: worker " << o.node_rank * o.nproc_per_node + static_cast<int>(i)
                    << " exited with status " << status[i] << "; stopping the others" << std::endl;
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

}  // namespace dreamlora::train
