// Data-parallel training on PyTorch's own distributed engine (c10d): Gloo on CPU, NCCL on CUDA when
// libtorch has it. Launch is torchrun-compatible (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
// TCPStore rendezvous). With WORLD_SIZE unset or 1 every call is a no-op.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace dreamlora::train {

struct DistributedEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Reads the torchrun variables; malformed values are an error naming the variable.
  static DistributedEnv from_environment();
};

// The device a worker trains on: plain "cuda" becomes "cuda:LOCAL_RANK" in a data-parallel run, so the
// workers of one machine use one GPU each; anything else (cpu, an explicit cuda:N) is kept.
std::string worker_device(const std::string& device, const DistributedEnv& env);

// The address this host uses to reach `peer` (the source address of the route to it), e.g. 10.0.0.2 on
// the second machine when MASTER_ADDR is 10.0.0.1; empty when there is no route. Sends nothing.
std::string local_address_towards(const std::string& peer);

class Distributed {
 public:
  // Selects the worker's CUDA device, then rendezvous (TCPStore on master_addr:master_port) and process
  // group creation. timeout bounds every collective (NCCL runs in blocking-wait mode for that), so a
  // dead rank makes the others fail with a clear error instead of hanging.
  Distributed(const DistributedEnv& env, torch::Device device, std::chrono::seconds timeout);
  ~Distributed();

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  bool enabled() const { return env_.world_size > 1; }

  // Averages the gradients of params over all ranks, in flat buckets of about bucket_bytes.
  void average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 25 << 20);
  // Mean of a scalar over ranks (for logging the loss).
  double mean(double value);
  // True on every rank when any rank passes true (stop at the same step boundary).
  bool any(bool value);
  // Throws when the ranks' values differ, naming `what` and ending with `hint`.
  void check_equal(double value, const std::string& what, const std::string& hint = "the replicas diverged");
  void barrier();
  // A barrier after work that worker 0 does alone (validation images, final outputs, a checkpoint write
  // or download): the other workers wait here without a time limit, since that work may outlast the
  // collective timeout, and fail only when worker 0 is gone (its rendezvous store stops answering).
  void wait_for_main(const std::string& what);

 private:
  struct Impl;
  DistributedEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dreamlora::train
