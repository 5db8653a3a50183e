#include "dreamlora/train/distributed.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <cstdlib>

#include "dreamlora/common/error.h"

#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace dreamlora {

namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  DL_CHECK(end != v && *end == '\0' && n >= 0, "environment variable ", name, "='", v, "' is not a non-negative integer");
  return static_cast<int>(n);
}
}  // namespace

DistributedEnv DistributedEnv::from_environment() {
  DistributedEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  e.rank = env_int("RANK", 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  DL_CHECK(e.world_size >= 1, "WORLD_SIZE must be at least 1");
  DL_CHECK(e.rank < e.world_size, "RANK=", e.rank, " must be below WORLD_SIZE=", e.world_size);
  return e;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  torch::Device device = torch::kCPU;
  std::chrono::seconds timeout{};

  void allreduce(torch::Tensor& t, c10d::ReduceOp op) {
    std::vector<torch::Tensor> ts{t};
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    try {
      group->allreduce(ts, o)->wait(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
    } catch (const std::exception& e) {
      fail(str("distributed: a collective did not complete within ", timeout.count(),
               " s (a rank died or hangs; --dist-timeout sets the limit): ", e.what()));
    }
  }
};

Distributed::Distributed(const DistributedEnv& env, torch::Device device, std::chrono::seconds timeout)
    : env_(env), impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  impl_->timeout = timeout;
  if (env.world_size <= 1) return;
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = true;
  so.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    fail(str("distributed: rendezvous at ", env.master_addr, ":", env.master_port, " failed for rank ", env.rank, ": ",
             e.what()));
  }
#ifdef USE_C10D_NCCL
  if (device.is_cuda()) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
    impl_->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, opts);
    return;
  }
#endif
  DL_CHECK(device.is_cpu(), "distributed: CUDA training needs a libtorch built with NCCL");
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
  opts->threads = 2;
  impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, opts);
}

Distributed::~Distributed() = default;

void Distributed::average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  if (!enabled()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<torch::Tensor> flat_parts;
    for (auto& g : bucket) flat_parts.push_back(g.reshape({-1}));
    auto flat = torch::cat(flat_parts);
    impl_->allreduce(flat, c10d::ReduceOp::SUM);
    flat.div_(static_cast<double>(world_size()));
    int64_t offset = 0;
    for (auto& g : bucket) {
      g.copy_(flat.slice(0, offset, offset + g.numel()).view_as(g));
      offset += g.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const auto& p : params) {
    // Every rank must reduce the same tensors: a missing gradient counts as zeros.
    if (!p.grad().defined()) const_cast<torch::Tensor&>(p).mutable_grad() = torch::zeros_like(p);
    bucket.push_back(p.grad());
    bytes += p.grad().numel() * p.grad().element_size();
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

double Distributed::mean(double value) {
  if (!enabled()) return value;
  auto t = torch::tensor({value}, torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device));
  impl_->allreduce(t, c10d::ReduceOp::SUM);
  return t.item<double>() / world_size();
}

bool Distributed::any(bool value) {
  if (!enabled()) return value;
  auto t = torch::tensor({value ? 1.0 : 0.0}, torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device));
  impl_->allreduce(t, c10d::ReduceOp::MAX);
  return t.item<double>() > 0.5;
}

void Distributed::check_equal(double value, const std::string& what) {
  if (!enabled()) return;
  auto hi = torch::tensor({value}, torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device));
  auto lo = hi.clone();
  impl_->allreduce(hi, c10d::ReduceOp::MAX);
  impl_->allreduce(lo, c10d::ReduceOp::MIN);
  DL_CHECK(hi.item<double>() == lo.item<double>(), "distributed: ", what, " differs between ranks (min ",
           lo.item<double>(), ", max ", hi.item<double>(), "): the replicas diverged");
}

void Distributed::barrier() {
  if (!enabled()) return;
  any(false);
}

}  // namespace dreamlora
