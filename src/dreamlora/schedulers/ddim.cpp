// DDIMScheduler: see ddim.h. Scalars stay 0-dim float32 tensors, as in diffusers, so every rounding
// matches.
#include "dreamlora/schedulers/ddim.h"

#include <torch/torch.h>

#include "dreamlora/schedulers/noise_schedule.h"
#include "dreamlora/schedulers/timestep_spacing.h"

namespace dreamlora::schedulers {

DDIMScheduler::DDIMScheduler(const SchedulerConfig& config) : Sampler(config) {
  final_alpha_cumprod_ = config_.set_alpha_to_one ? torch::tensor(1.0f) : alphas_cumprod_[0].clone();
  // Before set_timesteps: every training timestep, descending.
  timesteps_ = torch::arange(config_.num_train_timesteps - 1, -1, -1, torch::kInt64);
}

void DDIMScheduler::set_timesteps(int64_t n) {
  const int64_t T = config_.num_train_timesteps;
  DL_CHECK(n >= 1 && n <= T, "DDIMScheduler: num_inference_steps must be in [1, ", T, "], got ", n);
  num_inference_steps_ = n;
  timesteps_ = to_long_tensor(spaced_timesteps(config_, n, {/*last_timestep=*/T}));
}

StepOutput DDIMScheduler::step(const torch::Tensor& model_output, double timestep,
                               const torch::Tensor& sample,
                               c10::optional<at::Generator> /*generator: unused with eta = 0*/) {
  // model_output, sample: [B, C, H, W]
  DL_CHECK(num_inference_steps_ > 0, "DDIMScheduler: call set_timesteps before step");
  const auto t = static_cast<int64_t>(timestep);
  DL_CHECK(t >= 0 && t < config_.num_train_timesteps, "DDIMScheduler: timestep ", timestep, " out of range");
  const int64_t prev_t = t - config_.num_train_timesteps / num_inference_steps_;

  auto alpha_prod_t = alphas_cumprod_[t];
  auto alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
  auto beta_prod_t = 1 - alpha_prod_t;

  torch::Tensor pred_original_sample, pred_epsilon;
  const auto& type = config_.prediction_type;
  if (type == "epsilon") {
    pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
    pred_epsilon = model_output;
  } else if (type == "sample") {
    pred_original_sample = model_output;
    pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
  } else {  // v_prediction
    pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
    pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
  }
  if (config_.clip_sample) {
    pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }
  // eta = 0: std_dev_t is exactly 0, so the direction term is sqrt(1 - ab_prev - 0) * eps.
  auto std_dev_t = 0.0 * alpha_prod_t;
  auto pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
  auto prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;
  return {prev_sample, pred_original_sample};
}

}  // namespace dreamlora::schedulers
