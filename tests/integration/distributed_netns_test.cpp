// Two machines on one: two network namespaces joined by a veth pair (10.213.x.1 and .2, which exist only
// inside them) act as two hosts with one `dreamlora launch` each, MASTER_ADDR on the first. The job trains,
// checkpoints into a folder both see (as shared storage would), stops with one checkpoint on SIGTERM to
// either node's launcher, resumes, and ends equal to a one-process run. Needs root; skips otherwise.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

constexpr char kNetnsPrefix[] = "dreamlora-netns-";

bool shell_ok(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
}

std::string shell_output(const std::string& command) {
  std::string text;
  if (FILE* p = popen(command.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
    pclose(p);
  }
  return text;
}

// Namespaces left by a test process that was killed (they outlive it) are removed at the next start.
void remove_stale_namespaces() {
  std::istringstream list(shell_output("ip netns list 2>/dev/null"));
  for (std::string line; std::getline(list, line);) {
    const std::string name = line.substr(0, line.find(' '));
    if (name.rfind(kNetnsPrefix, 0) != 0) continue;
    const int owner = std::atoi(name.c_str() + sizeof(kNetnsPrefix) - 1);
    if (owner > 0 && kill(owner, 0) != 0 && errno == ESRCH) shell_ok("ip netns del " + name);
  }
}

// Two namespaces "hosts" a and b joined by a veth pair; removed (with the pair) on destruction.
class TwoHosts {
 public:
  TwoHosts() {
    const int pid = getpid();
    const std::string subnet = "10.213." + std::to_string(pid % 250 + 1) + ".";
    name_a = kNetnsPrefix + std::to_string(pid) + "-a";
    name_b = kNetnsPrefix + std::to_string(pid) + "-b";
    addr_a = subnet + "1";
    addr_b = subnet + "2";
    const std::string veth_a = "dlv" + std::to_string(pid) + "a", veth_b = "dlv" + std::to_string(pid) + "b";
    remove_stale_namespaces();
    const std::vector<std::string> steps = {"ip netns add " + name_a,
                                            "ip netns add " + name_b,
                                            "ip link add " + veth_a + " type veth peer name " + veth_b,
                                            "ip link set " + veth_a + " netns " + name_a,
                                            "ip link set " + veth_b + " netns " + name_b,
                                            "ip -n " + name_a + " addr add " + addr_a + "/24 dev " + veth_a,
                                            "ip -n " + name_b + " addr add " + addr_b + "/24 dev " + veth_b,
                                            "ip -n " + name_a + " link set " + veth_a + " up",
                                            "ip -n " + name_b + " link set " + veth_b + " up",
                                            "ip -n " + name_a + " link set lo up",
                                            "ip -n " + name_b + " link set lo up"};
    for (const auto& step : steps) {
      if (!shell_ok(step)) {
        failed_step = step;
        return;
      }
    }
  }
  ~TwoHosts() {
    shell_ok("ip netns del " + name_a);  // deleting a namespace deletes its veth end, and so the pair
    shell_ok("ip netns del " + name_b);
  }
  bool ok() const { return failed_step.empty(); }

  std::string name_a, name_b, addr_a, addr_b, failed_step;
};

struct NetnsWorld {
  fs::path model, images;
};
const NetnsWorld& netns_world() {
  static NetnsWorld w = [] {
    auto root = make_temp_dir("netns-world");
    NetnsWorld w{root / "tiny-sd", root / "subject"};
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 4, 40, 2);
    return w;
  }();
  return w;
}

std::vector<std::string> netns_train(const fs::path& out, int batch, int64_t steps) {
  return {"--threads",
          "1",
          "train",
          "--model",
          netns_world().model.string(),
          "--image-path",
          netns_world().images.string(),
          "--prompt",
          "a photo of sks toy",
          "--resolution",
          "32",
          "--num-steps",
          std::to_string(steps),
          "--batch-size",
          std::to_string(batch),
          "--checkpointing-steps",
          "2",
          "--lr",
          "1e-3",
          "--output-dir",
          out.string(),
          "--dist-timeout",
          "20"};
}

// One node's launcher inside its namespace (`ip netns exec` execs it: the pid is the launcher's).
int spawn_node(const std::string& netns, int node_rank, const std::string& master_addr, const fs::path& out,
               int64_t steps, const fs::path& log) {
  std::vector<std::string> args = {"ip",
                                   "netns",
                                   "exec",
                                   netns,
                                   dreamlora_binary().string(),
                                   "launch",
                                   "--nproc-per-node",
                                   "1",
                                   "--nnodes",
                                   "2",
                                   "--node-rank",
                                   std::to_string(node_rank),
                                   "--master-addr",
                                   master_addr,
                                   "--master-port",
                                   "29500",
                                   "--grace",
                                   "5",
                                   "--"};
  for (const auto& a : netns_train(out, 1, steps)) args.push_back(a);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execvp("ip", argv.data());
    _exit(127);
  }
  return pid;
}

// Both nodes of one run; any launcher still running at the end (a failed assertion) is killed.
struct TwoNodeRun {
  int pid_a = -1, pid_b = -1;
  fs::path log_a, log_b;
  ~TwoNodeRun() {
    for (int* pid : {&pid_a, &pid_b})
      if (*pid > 0) {
        kill(*pid, SIGKILL);
        wait_process(*pid);
      }
  }
  std::pair<int, int> wait_both() {
    std::pair<int, int> status{wait_process(pid_a), wait_process(pid_b)};
    pid_a = pid_b = -1;
    return status;
  }
  std::string logs() const { return "node 0:\n" + read_text(log_a) + "\nnode 1:\n" + read_text(log_b); }
};

TwoNodeRun start_two_nodes(const TwoHosts& hosts, const fs::path& out, int64_t steps,
                           const std::string& round) {
  TwoNodeRun run;
  run.log_a = out.parent_path() / (out.filename().string() + "-" + round + "-node0.log");
  run.log_b = out.parent_path() / (out.filename().string() + "-" + round + "-node1.log");
  run.pid_a = spawn_node(hosts.name_a, 0, hosts.addr_a, out, steps, run.log_a);
  run.pid_b = spawn_node(hosts.name_b, 1, hosts.addr_a, out, steps, run.log_b);
  return run;
}

int64_t newest_checkpoint(const fs::path& out) {
  int64_t newest = -1;
  for (const auto& e : fs::directory_iterator(out))
    if (auto step = dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string()))
      newest = std::max(newest, *step);
  return newest;
}

bool netns_has_exited(int pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

// Waits (at most `seconds`) for a checkpoint newer than `step`, or until a node's launcher ended early.
bool wait_for_checkpoint_after(const fs::path& out, int64_t step, double seconds, const TwoNodeRun& run) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (newest_checkpoint(out) > step) return true;
    if (netns_has_exited(run.pid_a) || netns_has_exited(run.pid_b)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// Every checkpoint verifies; returns the newest step.
int64_t check_all_checkpoints_verify(const fs::path& out) {
  for (const auto& e : fs::directory_iterator(out))
    if (dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string()))
      EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(e.path()).ok) << e.path();
  return newest_checkpoint(out);
}

}  // namespace

TEST(DistributedNetns, TwoHostsTrainStopOnSigtermToEitherNodeAndResume) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for `ip netns` (two network namespaces as two hosts)";
  if (!shell_ok("ip -V")) GTEST_SKIP() << "`ip` (iproute2) is not installed";
  TwoHosts hosts;
  if (!hosts.ok()) GTEST_SKIP() << "cannot build the two-host network: `" << hosts.failed_step << "` failed";
  const auto t0 = std::chrono::steady_clock::now();
  auto out = make_temp_dir("netns-out");

  // Round 1: train until a checkpoint exists, then SIGTERM to the second node's launcher.
  int64_t stopped_at = 0;
  {
    auto run = start_two_nodes(hosts, out, 400, "round1");
    ASSERT_TRUE(wait_for_checkpoint_after(out, 0, 120, run)) << run.logs();
    kill(run.pid_b, SIGTERM);
    auto [a, b] = run.wait_both();
    EXPECT_EQ(a, 75) << run.logs();
    EXPECT_EQ(b, 75) << run.logs();
    stopped_at = check_all_checkpoints_verify(out);
    EXPECT_NE(read_text(run.log_a).find("checkpoint at step " + std::to_string(stopped_at) + " written"),
              std::string::npos)
        << run.logs();
    EXPECT_NE(read_text(run.log_b).find("stop requested (SIGTERM)"), std::string::npos) << run.logs();
  }
  // Round 2: both resume from that step; SIGTERM to the first node's launcher (worker 0's) this time.
  {
    auto run = start_two_nodes(hosts, out, 400, "round2");
    ASSERT_TRUE(wait_for_checkpoint_after(out, stopped_at, 120, run)) << run.logs();
    kill(run.pid_a, SIGTERM);
    auto [a, b] = run.wait_both();
    EXPECT_EQ(a, 75) << run.logs();
    EXPECT_EQ(b, 75) << run.logs();
    for (const auto& log : {run.log_a, run.log_b})
      EXPECT_NE(read_text(log).find("at step " + std::to_string(stopped_at) + " of 400"), std::string::npos)
          << run.logs();
    stopped_at = check_all_checkpoints_verify(out);
  }
  // Round 3: resume and finish two steps later.
  const int64_t total = stopped_at + 2;
  {
    auto run = start_two_nodes(hosts, out, total, "round3");
    auto [a, b] = run.wait_both();
    ASSERT_EQ(a, 0) << run.logs();
    ASSERT_EQ(b, 0) << run.logs();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The interrupted two-host run equals one uninterrupted process of the same global batch.
  auto reference = make_temp_dir("netns-reference");
  auto single = run_dreamlora(netns_train(reference, 2, total));
  ASSERT_EQ(single.exit_status, 0) << single.output;
  auto fa = dreamlora::io::safetensors::File::open(out / "pytorch_lora_weights.safetensors");
  auto fb = dreamlora::io::safetensors::File::open(reference / "pytorch_lora_weights.safetensors");
  ASSERT_EQ(fa.names(), fb.names());
  double worst = 0;
  for (const auto& name : fa.names()) worst = std::max(worst, max_abs_diff(fa.get(name), fb.get(name)));
  EXPECT_LE(worst, 1e-5);
  std::cout << "[ netns ] 3 rounds (2 SIGTERMs, " << total << " steps) on two hosts in " << seconds
            << " s; LoRA max abs difference to one process " << worst << std::endl;
}
