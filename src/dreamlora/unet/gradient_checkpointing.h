// Gradient checkpointing for libtorch (which has no torch.utils.checkpoint): run a block without
// keeping its activations, and recompute it with grad during backward (the reentrant variant).
// Parameters of the block that require grad (LoRA adapters) receive their gradients because they are
// passed to the autograd Function as extra inputs. The block must be deterministic (dropout 0): RNG
// state is not replayed.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <vector>

namespace dreamlora::unet {

using CheckpointedFn = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

// fn(inputs) with activations freed after forward and recomputed in backward. owner is the module
// whose parameters fn uses. Falls back to a plain call when grad mode is off or nothing requires
// grad. Undefined tensors in inputs are passed through to fn as undefined.
torch::Tensor checkpoint(const torch::nn::Module& owner, const CheckpointedFn& fn,
                         const std::vector<torch::Tensor>& inputs);

}  // namespace dreamlora::unet
