// Modules that are about to be filled from a weights file are built without their random initialisation:
// at SD-XL size torch's kaiming/normal fills are seconds of work whose result is overwritten at once.
// Under a SkipInitGuard the factories below (and LinearWithLora) allocate parameters with torch::empty;
// otherwise they initialise exactly as torch.nn does, so a seeded random model is unchanged.
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>

namespace dreamlora::nn {

// While one lives on this thread, parameters built by the factories are left uninitialised.
class SkipInitGuard {
 public:
  SkipInitGuard();
  ~SkipInitGuard();
  SkipInitGuard(const SkipInitGuard&) = delete;
  SkipInitGuard& operator=(const SkipInitGuard&) = delete;

 private:
  bool previous_;
};

bool init_skipped();

// torch::nn::Conv2d / Embedding with the same options, parameters and forward.
torch::nn::Conv2d conv2d(const torch::nn::Conv2dOptions& options);
torch::nn::Embedding embedding(int64_t num_embeddings, int64_t embedding_dim);

}  // namespace dreamlora::nn
