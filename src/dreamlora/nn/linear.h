// Linear layer with an optional LoRA adapter (diffusers' LoRACompatibleLinear idea): every layer a LoRA
// can target is this class, so injection toggles an adapter in place instead of swapping modules.
// Parameter names: weight, bias (the base, as torch.nn.Linear); lora.down.weight [r, in],
// lora.up.weight [out, r] once an adapter is enabled — the diffusers file key is "unet." + that name.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

namespace dreamlora::nn {

struct LoRAOptions {
  int64_t rank = 4;
  double alpha = 4.0;
  double dropout = 0.0;
};

// scale = alpha / rank: the one place that formula lives.
double lora_scale(double alpha, int64_t rank);

class LoRAAdapterImpl : public torch::nn::Module {
 public:
  LoRAAdapterImpl(int64_t in_features, int64_t out_features, LoRAOptions options);
  // [.., in] -> [.., out], already multiplied by scale * multiplier
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear down{nullptr};  // A: [r, in]
  torch::nn::Linear up{nullptr};    // B: [out, r]
  LoRAOptions options;
  double multiplier = 1.0;  // user scale at inference (--lora-scale)
};
TORCH_MODULE(LoRAAdapter);

class LinearWithLoraImpl : public torch::nn::Module {
 public:
  LinearWithLoraImpl(int64_t in_features, int64_t out_features, bool bias = true);
  // [.., in] -> [.., out]
  torch::Tensor forward(const torch::Tensor& x);

  // Adds an adapter (B zero, A ~ N(0, 1/rank) as peft's "gaussian" init, drawn from gen when given).
  void enable_lora(const LoRAOptions& options, c10::optional<at::Generator> gen = c10::nullopt);
  bool has_lora() const { return !lora.is_empty(); }
  void remove_lora();
  // W += scale * multiplier * B A; the adapter stays but is bypassed until unfuse.
  void fuse_lora(double multiplier = 1.0);
  void unfuse_lora();

  int64_t in_features, out_features;
  torch::Tensor weight, bias;
  LoRAAdapter lora{nullptr};

 private:
  torch::Tensor fused_delta_;
};
TORCH_MODULE(LinearWithLora);

}  // namespace dreamlora::nn
