// `dreamlora launch`: starts the workers of one machine of a data-parallel run with the torchrun
// environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT),
// each in a process group of its own, forwards SIGTERM/SIGINT to them once per signal received, and exits
// with the first failure (stopping the others) or, when all end alike, with their common status.
#pragma once

#include <string>
#include <vector>

namespace dreamlora::train {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;       // machines in the job; each runs one launcher
  int node_rank = 0;    // this machine's place: its workers are ranks node_rank * nproc_per_node + i
  int master_port = 0;  // 0: a free loopback port on one machine, 29500 (torchrun's) on several
  std::string master_addr = "127.0.0.1";  // where worker 0 (node 0) listens for the rendezvous
  double grace_seconds = 30;              // after a failure, how long the others get to exit before SIGKILL
};

// Runs `executable args...` nproc_per_node times; returns the exit status for the launcher.
int launch_workers(const std::string& executable, const std::vector<std::string>& args,
                   const LaunchOptions& options);

// A free TCP port on the loopback interface.
int free_loopback_port();

}  // namespace dreamlora::train
