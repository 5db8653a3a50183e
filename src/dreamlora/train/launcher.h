// `dreamlora launch`: starts N local workers of a data-parallel run with the torchrun environment
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), forwards SIGTERM/SIGINT to them, and exits
// with the first failure (stopping the others) or, when all end alike, with their common status.
#pragma once

#include <string>
#include <vector>

namespace dreamlora {

struct LaunchOptions {
  int nproc_per_node = 1;
  int master_port = 0;  // 0: a free loopback port
  std::string master_addr = "127.0.0.1";
  double grace_seconds = 30;  // after a failure, how long the others get to exit before SIGKILL
};

// Runs `executable args...` nproc_per_node times; returns the exit status for the launcher.
int launch_workers(const std::string& executable, const std::vector<std::string>& args, const LaunchOptions& options);

// A free TCP port on the loopback interface.
int free_loopback_port();

}  // namespace dreamlora
