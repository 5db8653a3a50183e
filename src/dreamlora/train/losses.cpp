#include "dreamlora/train/losses.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

torch::Tensor min_snr_weights(const torch::Tensor& snr, double gamma, const std::string& prediction_type) {
  auto clipped = torch::clamp_max(snr, gamma);  // min(snr, gamma)
  if (prediction_type == "epsilon") return clipped / snr;
  if (prediction_type == "v_prediction") return clipped / (snr + 1);
  fail(
      str("--snr-gamma: Min-SNR weighting needs prediction_type epsilon or v_prediction, the scheduler has '",
          prediction_type, "'"));
}

LossParts dreambooth_loss(const torch::Tensor& pred, const torch::Tensor& target, bool prior_preservation,
                          double prior_loss_weight, const torch::Tensor& snr_weights) {
  auto p = pred.to(torch::kFloat32);
  auto t = target.to(torch::kFloat32);
  LossParts parts;
  torch::Tensor prior;
  if (prior_preservation) {
    auto pc = p.chunk(2, 0);
    auto tc = t.chunk(2, 0);
    p = pc[0];
    t = tc[0];
    prior = torch::mse_loss(pc[1], tc[1]);
  }
  torch::Tensor instance;
  if (snr_weights.defined()) {
    // mean over C, H, W per sample, weighted, then mean over the batch (diffusers' SDXL script)
    auto per_sample = torch::mse_loss(p, t, torch::Reduction::None).mean({1, 2, 3});
    instance = (per_sample * snr_weights.to(per_sample.dtype())).mean();
  } else {
    instance = torch::mse_loss(p, t);
  }
  parts.instance = instance.detach();
  parts.total = instance;
  if (prior.defined()) {
    parts.prior = prior.detach();
    parts.total = instance + prior_loss_weight * prior;
  }
  return parts;
}

TrainingNoise draw_training_noise(c10::IntArrayRef shape, double noise_offset, double input_perturbation,
                                  at::Generator& gen) {
  auto noise = torch::randn(shape, gen);
  if (noise_offset > 0) noise = noise + noise_offset * torch::randn({noise.size(0), 1, 1}, gen);
  TrainingNoise out{noise, noise};
  if (input_perturbation > 0) out.input = noise + input_perturbation * torch::randn(shape, gen);
  return out;
}

}  // namespace dreamlora::train
