#include "dreamlora/train/distributed.h"

#include <arpa/inet.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <netdb.h>
#include <sys/socket.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <thread>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dreamlora/common/error.h"

#ifdef USE_C10D_NCCL  // defined by CMakeLists.txt for CUDA builds of libtorch
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace dreamlora::train {

namespace {

// libtorch 2.x split the process group: Gloo and NCCL became c10d::Backend implementations that a
// c10d::ProcessGroup dispatches to. We call the backend directly; on 1.x it is the ProcessGroup itself.
#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

using Millis = std::chrono::milliseconds;
constexpr Millis kStorePollInterval{100};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  DL_CHECK(end != v && *end == '\0' && n >= 0, "environment variable ", name, "='", v,
           "' is not a non-negative integer");
  return static_cast<int>(n);
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) parts.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return parts;
}

// Gloo listens on this host's own address. GLOO_SOCKET_IFNAME (torch's variable) names interfaces;
// otherwise the address that routes to MASTER_ADDR, which on every other machine differs from
// MASTER_ADDR itself (binding to it fails there) and, unlike the hostname, cannot resolve to loopback.
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices(const DistributedEnv& env) {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  const char* ifnames = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifnames != nullptr && *ifnames != '\0') {
    for (const auto& name : split_commas(ifnames))
      devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    return devices;
  }
  const std::string local = local_address_towards(env.master_addr);
  devices.push_back(local.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                  : c10d::ProcessGroupGloo::createDeviceForHostname(local));
  return devices;
}

void select_cuda_device(const torch::Device& device) {
  if (!device.is_cuda() || !device.has_index()) return;
  const int count = static_cast<int>(torch::cuda::device_count());  // an int8 DeviceIndex on some versions
  DL_CHECK(device.index() < count, "--device ", device.str(), ": this machine has ", count,
           " CUDA device(s) (LOCAL_RANK picks the device of a worker: start at most that many per machine)");
  // NCCL creates its communicator on the current device, and "cuda" tensors land there too.
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
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

std::string worker_device(const std::string& device, const DistributedEnv& env) {
  if (device == "cuda" && env.world_size > 1) return "cuda:" + std::to_string(env.local_rank);
  return device;
}

std::string local_address_towards(const std::string& peer) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(peer.c_str(), "9", &hints, &found) != 0) return "";
  std::string address;
  for (addrinfo* a = found; a != nullptr && address.empty(); a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype, 0);
    if (fd < 0) continue;
    // connect() on a UDP socket only picks the route and the source address.
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw = local.ss_family == AF_INET6
                            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                            : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
      if (inet_ntop(local.ss_family, raw, text, sizeof(text)) != nullptr) address = text;
    }
    close(fd);
  }
  freeaddrinfo(found);
  return address;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<CollectiveBackend> group;
  torch::Device device = torch::kCPU;
  std::chrono::seconds timeout{};
  int64_t main_waits = 0;  // wait_for_main calls so far: names its store key, the same on every rank

  void allreduce(torch::Tensor& t, c10d::ReduceOp op) {
    std::vector<torch::Tensor> ts{t};
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    try {
      group->allreduce(ts, o)->wait(std::chrono::duration_cast<Millis>(timeout));
    } catch (const std::exception& e) {
      fail(str("distributed: a collective did not complete within ", timeout.count(),
               " s (a rank died or hangs; --dist-timeout sets the limit): ", e.what()));
    }
  }

  void create_nccl_group(const DistributedEnv& env) {
#ifdef USE_C10D_NCCL
    // Without blocking wait, wait() only orders the CUDA stream: a dead peer leaves the all-reduce pending
    // on the GPU and the next .item() blocks forever. With it, wait(timeout) throws after the timeout.
    // libtorch >= 2.2 reads TORCH_NCCL_BLOCKING_WAIT, older ones NCCL_BLOCKING_WAIT; a user's choice stays.
    if (std::getenv("TORCH_NCCL_BLOCKING_WAIT") == nullptr && std::getenv("NCCL_BLOCKING_WAIT") == nullptr) {
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      setenv("NCCL_BLOCKING_WAIT", "1", 0);
    }
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::duration_cast<Millis>(timeout);
    group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, opts);
#else
    fail("distributed: CUDA training needs a CUDA build of libtorch (with NCCL); this one has none");
#endif
  }

  void create_gloo_group(const DistributedEnv& env) {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<Millis>(timeout));
    opts->devices = gloo_devices(env);
    opts->threads = 2;
    group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
  }

  // Polls rather than Store::wait: a timed-out TCPStore wait leaves the connection out of step on
  // libtorch 1.x, and a poll notices at once when the store (worker 0) is gone. No limit: wait for ever.
  template <class Ready>
  void poll_store(Ready ready, std::optional<Millis> limit) {
    const auto start = std::chrono::steady_clock::now();
    while (!ready()) {
      DL_CHECK(!limit || std::chrono::steady_clock::now() - start < *limit, "timed out after ",
               limit->count() / 1000, " s");
      std::this_thread::sleep_for(kStorePollInterval);
    }
  }
};

Distributed::Distributed(const DistributedEnv& env, torch::Device device, std::chrono::seconds timeout)
    : env_(env), impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  impl_->timeout = timeout;
  select_cuda_device(device);
  if (env.world_size <= 1) return;
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = true;
  so.timeout = std::chrono::duration_cast<Millis>(timeout);
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    fail(str("distributed: rendezvous at ", env.master_addr, ":", env.master_port, " failed for rank ",
             env.rank, ": ", e.what()));
  }
  DL_CHECK(device.is_cpu() || device.is_cuda(), "distributed: --device ", device.str(),
           " is not supported (cpu or cuda)");
  if (device.is_cuda())
    impl_->create_nccl_group(env);
  else
    impl_->create_gloo_group(env);
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
  auto t =
      torch::tensor({value ? 1.0 : 0.0}, torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device));
  impl_->allreduce(t, c10d::ReduceOp::MAX);
  return t.item<double>() > 0.5;
}

void Distributed::check_equal(double value, const std::string& what, const std::string& hint) {
  if (!enabled()) return;
  auto hi = torch::tensor({value}, torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device));
  auto lo = hi.clone();
  impl_->allreduce(hi, c10d::ReduceOp::MAX);
  impl_->allreduce(lo, c10d::ReduceOp::MIN);
  DL_CHECK(hi.item<double>() == lo.item<double>(), "distributed: ", what,
           " differs between ranks (this rank ", env_.rank, ": ", value, "; min ", lo.item<double>(),
           ", max ", hi.item<double>(), "): ", hint);
}

void Distributed::barrier() {
  if (!enabled()) return;
  any(false);
}

void Distributed::wait_for_main(const std::string& what) {
  if (!enabled()) return;
  const std::string key = "dreamlora/main-reached/" + std::to_string(impl_->main_waits++);
  const std::string seen = key + "/seen";
  auto& store = *impl_->store;
  if (is_main()) {
    store.set(key, std::vector<uint8_t>{1});
    // Worker 0 hosts the store: it stays until every worker has seen the key (they are polling, so this
    // takes one poll interval), else, exiting next, it would take the store away from a slower poller.
    try {
      impl_->poll_store([&] { return store.add(seen, 0) >= world_size() - 1; },
                        std::chrono::duration_cast<Millis>(impl_->timeout));
    } catch (const std::exception& e) {
      fail(str("distributed: after ", what, ", not every worker answered (one died?; --dist-timeout ",
               impl_->timeout.count(), " s): ", e.what()));
    }
    return;
  }
  try {
    impl_->poll_store([&] { return store.check({key}); }, std::nullopt);
    store.add(seen, 1);
  } catch (const std::exception& e) {
    fail(str("distributed: worker ", env_.rank, " waited for worker 0 (", what,
             ") and worker 0 ended or became unreachable: ", e.what()));
  }
}

}  // namespace dreamlora::train
