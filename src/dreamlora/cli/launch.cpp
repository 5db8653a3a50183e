// `dreamlora launch --nproc-per-node N [--nnodes M --node-rank I --master-addr A] -- train ...`: the
// data-parallel workers of this machine (torchrun-compatible env).
#include <unistd.h>

#include <climits>

#include "dreamlora/cli/commands.h"
#include "dreamlora/train/launcher.h"

namespace dreamlora::cli {

Runner add_launch(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "launch",
      "Start this machine's data-parallel workers: dreamlora launch --nproc-per-node 2 -- train ...");
  auto opts = std::make_shared<train::LaunchOptions>();
  auto worker_args = std::make_shared<std::vector<std::string>>();
  cmd->add_option("--nproc-per-node", opts->nproc_per_node, "workers to start")->required();
  cmd->add_option("--nnodes", opts->nnodes, "machines in the job, each running one launcher")
      ->capture_default_str();
  cmd->add_option("--node-rank", opts->node_rank,
                  "this machine's number, 0 .. nnodes-1 (0 hosts the rendezvous)")
      ->capture_default_str();
  cmd->add_option("--master-addr", opts->master_addr, "address of node 0, reachable from every machine")
      ->capture_default_str();
  cmd->add_option("--master-port", opts->master_port,
                  "rendezvous port on node 0 (default: a free one on one machine, 29500 on several)");
  cmd->add_option("--grace", opts->grace_seconds, "seconds the other workers get after a failure")
      ->capture_default_str();
  cmd->add_option("command", *worker_args, "the worker's dreamlora arguments, after --")->required();
  return [opts, worker_args]() -> int {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    std::string exe = n > 0 ? std::string(self, static_cast<size_t>(n)) : "dreamlora";
    return train::launch_workers(exe, *worker_args, *opts);
  };
}

}  // namespace dreamlora::cli
