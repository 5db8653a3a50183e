#include "dreamlora/train/host_copy.h"

#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <thread>

namespace dreamlora::train {

HostCopy copy_to_host_async(const torch::Tensor& src) {
  if (!src.device().is_cuda()) return {src.to(torch::kCPU), [] {}};
  const auto device = src.device();
  c10::impl::VirtualGuardImpl impl(device.type());
  const c10::Stream compute = impl.getStream(device);
  const c10::Stream side = impl.getStreamFromGlobalPool(device);
  // The side stream waits for what the training stream queued so far; the host does not wait at all.
  c10::Event ready(device.type());
  ready.record(compute);
  ready.block(side);
  // src's memory goes back to the caching allocator only after the side stream is done with it.
  impl.recordDataPtrOnStream(src.storage().data_ptr(), side);
  auto host = torch::empty(src.sizes(), src.options().device(torch::kCPU).pinned_memory(true));
  {
    c10::StreamGuard on_side(side);
    host.copy_(src, /*non_blocking=*/true);
  }
  auto done = std::make_shared<c10::Event>(device.type());
  done->record(side);
  return {host, [done] {
            while (!done->query()) std::this_thread::sleep_for(std::chrono::microseconds(200));
          }};
}

torch::Tensor to_device_async(const torch::Tensor& host, torch::Device device) {
  if (!device.is_cuda() || !host.device().is_cpu()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace dreamlora::train
