// diffusers' DDPMScheduler as the training noise schedule: forward diffusion (add_noise), the
// v-prediction target (get_velocity), the target by prediction type, and SNR for Min-SNR weighting.
// The ancestral DDPM sampling step is not implemented (training only); sampling uses sampler.h.
#pragma once

#include <torch/types.h>

#include <filesystem>

#include "dreamlora/schedulers/scheduler_config.h"

namespace dreamlora::schedulers {

class DDPMScheduler {
 public:
  explicit DDPMScheduler(const SchedulerConfig& config);
  // Reads scheduler_config.json (any class name) with DDPMScheduler's defaults.
  static DDPMScheduler from_file(const std::filesystem::path& scheduler_config_json);

  const SchedulerConfig& config() const { return config_; }
  int64_t num_train_timesteps() const { return config_.num_train_timesteps; }
  const std::string& prediction_type() const { return config_.prediction_type; }
  const torch::Tensor& betas() const { return betas_; }                    // [T] float32
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // [T] float32

  // Keeps a copy of the schedule on device, so add_noise / get_velocity there copy nothing per call (on
  // CUDA a copy from pageable host memory would wait for every kernel queued so far).
  void keep_on(torch::Device device);

  // sqrt(ab_t) * original + sqrt(1 - ab_t) * noise. original, noise: [B, ...]; timesteps: [B] int64.
  torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                          const torch::Tensor& timesteps) const;
  // sqrt(ab_t) * noise - sqrt(1 - ab_t) * sample (the v-prediction target). Shapes as add_noise.
  torch::Tensor get_velocity(const torch::Tensor& sample, const torch::Tensor& noise,
                             const torch::Tensor& timesteps) const;
  // What the model is trained to predict: noise (epsilon), get_velocity (v_prediction) or latents (sample).
  torch::Tensor training_target(const torch::Tensor& latents, const torch::Tensor& noise,
                                const torch::Tensor& timesteps) const;
  // Signal-to-noise ratio ab_t / (1 - ab_t) at timesteps [B] -> [B] float32, computed as diffusers'
  // training_utils.compute_snr (for Min-SNR-gamma loss weighting).
  torch::Tensor snr(const torch::Tensor& timesteps) const;

 private:
  // [B] -> [B, 1, ..., 1] with ndim dims, on device/dtype of like
  torch::Tensor broadcast_to_sample(const torch::Tensor& per_sample, const torch::Tensor& like) const;

  torch::Tensor alphas_cumprod_like(const torch::Tensor& like) const;

  SchedulerConfig config_;
  torch::Tensor betas_, alphas_cumprod_;
  torch::Tensor alphas_cumprod_on_device_;  // keep_on()
};

}  // namespace dreamlora::schedulers
