// DDPMScheduler training-side math: see ddpm.h. Every expression follows diffusers' operation order so
// float32 results are bit-identical.
#include "dreamlora/schedulers/ddpm.h"

#include <torch/torch.h>

#include "dreamlora/schedulers/noise_schedule.h"

namespace dreamlora::schedulers {

DDPMScheduler::DDPMScheduler(const SchedulerConfig& config) : config_(config) {
  DL_CHECK(config_.target_class == kDDPM, config_.source, ": DDPMScheduler needs a config parsed for ", kDDPM,
           ", got one parsed for ", config_.target_class);
  betas_ = make_betas(config_);
  alphas_cumprod_ = alphas_cumprod_from_betas(betas_);
}

DDPMScheduler DDPMScheduler::from_file(const std::filesystem::path& path) {
  return DDPMScheduler(SchedulerConfig::from_file(path, kDDPM));
}

torch::Tensor DDPMScheduler::broadcast_to_sample(const torch::Tensor& per_sample,
                                                 const torch::Tensor& like) const {
  auto v = per_sample.flatten();                     // [B]
  while (v.dim() < like.dim()) v = v.unsqueeze(-1);  // [B, 1, ..., 1]
  return v;
}

void DDPMScheduler::keep_on(torch::Device device) {
  alphas_cumprod_on_device_ = alphas_cumprod_.to(device);
}

torch::Tensor DDPMScheduler::alphas_cumprod_like(const torch::Tensor& like) const {
  const bool kept =
      alphas_cumprod_on_device_.defined() && alphas_cumprod_on_device_.device() == like.device();
  return (kept ? alphas_cumprod_on_device_ : alphas_cumprod_.to(like.device())).to(like.scalar_type());
}

torch::Tensor DDPMScheduler::add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                                       const torch::Tensor& timesteps) const {
  // original, noise: [B, C, H, W]; timesteps: [B]
  auto ac = alphas_cumprod_like(original);
  auto t = timesteps.to(original.device()).to(torch::kLong);
  DL_CHECK(t.numel() == original.size(0), "add_noise: ", t.numel(), " timesteps for a batch of ",
           original.size(0));
  auto sqrt_alpha_prod = broadcast_to_sample(ac.index({t}).pow(0.5), original);
  auto sqrt_one_minus_alpha_prod = broadcast_to_sample((1 - ac.index({t})).pow(0.5), original);
  return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise;
}

torch::Tensor DDPMScheduler::get_velocity(const torch::Tensor& sample, const torch::Tensor& noise,
                                          const torch::Tensor& timesteps) const {
  // sample, noise: [B, C, H, W]; timesteps: [B]
  auto ac = alphas_cumprod_like(sample);
  auto t = timesteps.to(sample.device()).to(torch::kLong);
  DL_CHECK(t.numel() == sample.size(0), "get_velocity: ", t.numel(), " timesteps for a batch of ",
           sample.size(0));
  auto sqrt_alpha_prod = broadcast_to_sample(ac.index({t}).pow(0.5), sample);
  auto sqrt_one_minus_alpha_prod = broadcast_to_sample((1 - ac.index({t})).pow(0.5), sample);
  return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample;
}

torch::Tensor DDPMScheduler::training_target(const torch::Tensor& latents, const torch::Tensor& noise,
                                             const torch::Tensor& timesteps) const {
  if (config_.prediction_type == "epsilon") return noise;
  if (config_.prediction_type == "v_prediction") return get_velocity(latents, noise, timesteps);
  if (config_.prediction_type == "sample") return latents;
  fail(str(config_.source, ": unknown prediction_type '", config_.prediction_type, "'"));
}

torch::Tensor DDPMScheduler::snr(const torch::Tensor& timesteps) const {
  // timesteps: [B] -> [B]
  auto sqrt_alphas_cumprod = alphas_cumprod_.pow(0.5);
  auto sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod_).pow(0.5);
  auto t = timesteps.to(torch::kCPU).to(torch::kLong);
  auto alpha = sqrt_alphas_cumprod.index({t}).to(torch::kFloat32);
  auto sigma = sqrt_one_minus_alphas_cumprod.index({t}).to(torch::kFloat32);
  return (alpha / sigma).pow(2).to(timesteps.device());
}

}  // namespace dreamlora::schedulers
