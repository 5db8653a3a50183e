#include "dreamlora/train/host_copy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using dreamlora::train::copy_to_host_async;

TEST(HostCopy, CpuTensorIsHandedOverWithoutACopy) {
  auto fresh = torch::cat({torch::arange(3, torch::kFloat32), torch::arange(3, torch::kFloat32)});
  auto copy = copy_to_host_async(fresh);
  copy.wait();
  EXPECT_EQ(copy.host.data_ptr(), fresh.data_ptr());  // the snapshot's stall stays one cat on the CPU
}

TEST(HostCopy, CudaCopyLandsInPinnedMemoryBeforeLaterKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto live = torch::arange(1 << 20, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA));
  auto expected = live.cpu();
  auto copy = copy_to_host_async(live.clone());
  live.add_(1);
  copy.wait();
  EXPECT_TRUE(copy.host.is_pinned());
  EXPECT_TRUE(copy.host.equal(expected));
}
