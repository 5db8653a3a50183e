// The training losses of diffusers' DreamBooth LoRA scripts: MSE to the prediction target, the
// prior-preservation term on the class half of the batch, and Min-SNR-gamma weighting.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace dreamlora::train {

// Min-SNR-gamma weights per sample (Hang et al. 2023, diffusers' formula): min(snr, gamma) / snr for
// epsilon prediction, min(snr, gamma) / (snr + 1) for v_prediction. snr: [B] -> [B]
torch::Tensor min_snr_weights(const torch::Tensor& snr, double gamma, const std::string& prediction_type);

struct TrainingNoise {
  torch::Tensor target;  // the noise the model learns to predict
  torch::Tensor input;   // the noise added to the latents (the target plus the input perturbation)
};
// The diffusion noise of one sample [C, h, w], drawn from gen in diffusers' order: randn, then the
// noise offset's randn [C, 1, 1] (offset > 0), then the input perturbation's randn (perturbation > 0).
TrainingNoise draw_training_noise(c10::IntArrayRef shape, double noise_offset, double input_perturbation,
                                  at::Generator& gen);

struct LossParts {
  torch::Tensor total;     // scalar, what backward() runs on
  torch::Tensor instance;  // scalar, detached
  torch::Tensor prior;     // scalar, detached; undefined without prior preservation
};

// pred, target: [B, C, H, W], fp32. With prior preservation the first half of the batch is instance
// images and the second half class images. snr_weights: [B_instance] or undefined (plain mean MSE).
LossParts dreambooth_loss(const torch::Tensor& pred, const torch::Tensor& target, bool prior_preservation,
                          double prior_loss_weight, const torch::Tensor& snr_weights);

}  // namespace dreamlora::train
