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

// src is a fresh tensor (e.g. a torch::cat of live weights): a CPU src is returned as it is, without a
// copy. Kernels queued on the device after this call may modify the tensors src was made from.
HostCopy copy_to_host_async(const torch::Tensor& src);

// host (a CPU tensor) on device. On CUDA through pinned memory and without waiting: a plain copy from
// pageable memory synchronises the stream, so the host could no longer queue the step ahead of the GPU.
torch::Tensor to_device_async(const torch::Tensor& host, torch::Device device);

}  // namespace dreamlora::train
