#include "dreamlora/nn/linear.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::nn {

double lora_scale(double alpha, int64_t rank) {
  DL_CHECK(rank > 0, "LoRA rank must be positive, got ", rank);
  return alpha / static_cast<double>(rank);
}

LoRAAdapterImpl::LoRAAdapterImpl(int64_t in_features, int64_t out_features, LoRAOptions opts)
    : options(opts) {
  DL_CHECK(opts.rank > 0, "LoRA rank must be positive, got ", opts.rank);
  down = register_module("down",
                         torch::nn::Linear(torch::nn::LinearOptions(in_features, opts.rank).bias(false)));
  up =
      register_module("up", torch::nn::Linear(torch::nn::LinearOptions(opts.rank, out_features).bias(false)));
}

torch::Tensor LoRAAdapterImpl::forward(const torch::Tensor& x) {
  auto h = x.to(down->weight.scalar_type());
  if (options.dropout > 0.0 && is_training()) h = torch::dropout(h, options.dropout, /*train=*/true);
  return up(down(h)) * (lora_scale(options.alpha, options.rank) * multiplier);
}

LinearWithLoraImpl::LinearWithLoraImpl(int64_t in, int64_t out, bool with_bias)
    : in_features(in), out_features(out) {
  if (init_skipped()) {
    weight = register_parameter("weight", torch::empty({out, in}));
    if (with_bias) bias = register_parameter("bias", torch::empty({out}));
    return;
  }
  // Same initialisation as torch.nn.Linear, so a randomly initialised model behaves like diffusers'.
  torch::nn::Linear init(torch::nn::LinearOptions(in, out).bias(with_bias));
  weight = register_parameter("weight", init->weight.detach().clone());
  if (with_bias) bias = register_parameter("bias", init->bias.detach().clone());
}

torch::Tensor LinearWithLoraImpl::forward(const torch::Tensor& x) {
  // [.., in] -> [.., out]; frozen weights may be fp16/bf16 while the adapter stays fp32.
  auto y = torch::nn::functional::linear(x.to(weight.scalar_type()), weight, bias);
  if (has_lora() && !fused_delta_.defined()) y = y + lora(x).to(y.scalar_type());
  return y;
}

void LinearWithLoraImpl::enable_lora(const LoRAOptions& options, c10::optional<at::Generator> gen) {
  DL_CHECK(!has_lora(), "LoRA adapter already enabled on this layer");
  lora = register_module("lora", LoRAAdapter(in_features, out_features, options));
  lora->to(weight.device(), torch::kFloat32);
  torch::NoGradGuard no_grad;
  // peft init_lora_weights="gaussian": A ~ N(0, 1/r), B = 0, so the adapter starts as a no-op. Drawn on
  // the CPU generator and then moved, so a CUDA run starts from the same weights as a CPU run.
  auto a = torch::empty(lora->down->weight.sizes(), torch::kFloat32);
  a.normal_(0.0, 1.0 / static_cast<double>(options.rank), gen);
  lora->down->weight.copy_(a);
  lora->up->weight.zero_();
}

void LinearWithLoraImpl::remove_lora() {
  if (!has_lora()) return;
  unfuse_lora();
  unregister_module("lora");
  lora = nullptr;
}

void LinearWithLoraImpl::fuse_lora(double multiplier) {
  DL_CHECK(has_lora(), "fuse_lora: layer has no LoRA adapter");
  if (fused_delta_.defined()) unfuse_lora();
  torch::NoGradGuard no_grad;
  auto scale = lora_scale(lora->options.alpha, lora->options.rank) * multiplier;
  auto delta = torch::mm(lora->up->weight, lora->down->weight) * scale;  // [out, in]
  fused_delta_ = weight.detach().clone();  // keep the exact base weights for unfuse
  weight.add_(delta.to(weight.scalar_type()));
}

void LinearWithLoraImpl::unfuse_lora() {
  if (!fused_delta_.defined()) return;
  torch::NoGradGuard no_grad;
  weight.copy_(fused_delta_);
  fused_delta_ = torch::Tensor();
}

}  // namespace dreamlora::nn
