// A copy of a device tensor into host memory that does not stall the training thread: on CUDA an
// asynchronous copy into pinned memory on a side stream (after the kernels queued so far), which the
// background writer waits for; on the CPU a plain copy.
#pragma once

#include <torch/types.h>

#include <functional>

namespace dreamlora::train {

struct HostCopy {
  torch::Tensor host;          // valid once wait() returned
  std::function<void()> wait;  // blocks until the copy is complete (no-op for CPU tensors)
};

// Kernels queued on the device after this call may modify src in place: the copy runs before them.
HostCopy copy_to_host_async(const torch::Tensor& src);

}  // namespace dreamlora::train
