// Euler and Euler-ancestral samplers: see euler.h. numpy parts of set_timesteps run in double through
// noise_schedule.h's np helpers; tensor parts use 0-dim float32 tensors like diffusers.
#include "dreamlora/schedulers/euler.h"

#include <torch/torch.h>

#include "dreamlora/schedulers/noise_schedule.h"
#include "dreamlora/schedulers/timestep_spacing.h"

namespace dreamlora::schedulers {

EulerSamplerBase::EulerSamplerBase(const SchedulerConfig& config) : Sampler(config) {
  // Before set_timesteps: the full training schedule, sigmas descending plus a final 0.
  auto sigmas = sigmas_from_alphas_cumprod(alphas_cumprod_).flip(0);
  sigmas_ = torch::cat({sigmas, torch::zeros({1}, torch::kFloat32)});
  const int64_t T = config_.num_train_timesteps;
  auto ts = np::linspace(0, static_cast<double>(T - 1), T);
  std::reverse(ts.begin(), ts.end());
  timesteps_ = to_float_tensor(ts);
}

void EulerSamplerBase::set_timesteps(int64_t n) {
  const int64_t T = config_.num_train_timesteps;
  DL_CHECK(n >= 1 && n <= T, class_name(), ": num_inference_steps must be in [1, ", T, "], got ", n);
  num_inference_steps_ = n;
  // Timesteps are float32 in diffusers; round through float so interp sees the same values.
  auto ts = spaced_timesteps(config_, n, {/*last_timestep=*/T, /*extra_points=*/0, /*round_linspace=*/false});
  const auto train_sigmas = to_doubles(sigmas_from_alphas_cumprod(alphas_cumprod_));  // float32 values
  auto sigmas = np::interp(ts, train_sigmas);
  if (config_.use_karras_sigmas) {
    std::vector<double> log_sigmas(train_sigmas.size());
    for (size_t i = 0; i < train_sigmas.size(); ++i) {
      log_sigmas[i] = std::log(static_cast<float>(train_sigmas[i]));  // numpy: float32 log of a float32 array
    }
    const double sigma_min = config_.sigma_min.value_or(sigmas.back());
    const double sigma_max = config_.sigma_max.value_or(sigmas.front());
    sigmas = karras_sigmas(sigma_min, sigma_max, n);
    for (int64_t i = 0; i < n; ++i) ts[i] = sigma_to_t(sigmas[i], log_sigmas);
  }
  sigmas_ = torch::cat({to_float_tensor(sigmas), torch::zeros({1}, torch::kFloat32)});
  timesteps_ = to_float_tensor(ts);
  step_index_ = -1;
}

double EulerSamplerBase::init_noise_sigma() const {
  auto max_sigma = sigmas_.max();
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing") {
    return max_sigma.item<double>();
  }
  return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
}

void EulerSamplerBase::init_step_index(double timestep) {
  if (step_index_ < 0) step_index_ = index_for_timestep(timestep);
}

torch::Tensor EulerSamplerBase::scale_model_input(const torch::Tensor& sample, double timestep) {
  // sample: [B, C, H, W]
  init_step_index(timestep);
  auto sigma = sigmas_[step_index_];
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

torch::Tensor EulerSamplerBase::pred_original(const torch::Tensor& model_output, const torch::Tensor& sample,
                                              const torch::Tensor& sigma) const {
  const auto& type = config_.prediction_type;
  if (type == "epsilon") return sample - sigma * model_output;
  if (type == "v_prediction") {
    return model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
  }
  return model_output;  // "sample"
}

StepOutput EulerDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                        const torch::Tensor& sample_in,
                                        c10::optional<at::Generator> generator) {
  // model_output, sample: [B, C, H, W]
  DL_CHECK(num_inference_steps_ > 0, class_name(), ": call set_timesteps before step");
  init_step_index(timestep);
  DL_CHECK(step_index_ + 1 < sigmas_.size(0), class_name(), ": step called after the last timestep");
  auto sample = sample_in.to(torch::kFloat32);
  auto sigma = sigmas_[step_index_];
  // diffusers draws the churn noise even when s_churn = 0 (gamma = 0) and then ignores it.
  auto noise = randn_tensor(model_output.sizes(), generator, model_output.options());
  (void)noise;
  auto sigma_hat = sigma * (0.0 + 1);  // gamma = 0
  torch::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = sample - sigma_hat * model_output;
  } else {
    pred_original_sample = pred_original(model_output, sample, sigma);
  }
  auto derivative = (sample - pred_original_sample) / sigma_hat;
  auto dt = sigmas_[step_index_ + 1] - sigma_hat;
  auto prev_sample = (sample + derivative * dt).to(model_output.scalar_type());
  ++step_index_;
  return {prev_sample, pred_original_sample};
}

StepOutput EulerAncestralDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                                 const torch::Tensor& sample_in,
                                                 c10::optional<at::Generator> generator) {
  // model_output, sample: [B, C, H, W]
  DL_CHECK(num_inference_steps_ > 0, class_name(), ": call set_timesteps before step");
  init_step_index(timestep);
  DL_CHECK(step_index_ + 1 < sigmas_.size(0), class_name(), ": step called after the last timestep");
  auto sigma = sigmas_[step_index_];
  auto sample = sample_in.to(torch::kFloat32);
  auto pred_original_sample = pred_original(model_output, sample, sigma);

  auto sigma_from = sigmas_[step_index_];
  auto sigma_to = sigmas_[step_index_ + 1];
  // Split the move to sigma_to into a deterministic part (down) and fresh noise (up).
  auto sigma_up = (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
  auto sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);
  auto derivative = (sample - pred_original_sample) / sigma;
  auto dt = sigma_down - sigma;
  auto prev_sample = sample + derivative * dt;
  auto noise = randn_tensor(model_output.sizes(), generator, model_output.options());
  prev_sample = (prev_sample + noise * sigma_up).to(model_output.scalar_type());
  ++step_index_;
  return {prev_sample, pred_original_sample};
}

}  // namespace dreamlora::schedulers
