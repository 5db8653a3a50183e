// DPM-Solver++ multistep: see dpm_solver.h. Scalar math on 0-dim float32 tensors in diffusers' order.
#include "dreamlora/schedulers/dpm_solver.h"

#include <torch/torch.h>

#include "dreamlora/schedulers/noise_schedule.h"
#include "dreamlora/schedulers/timestep_spacing.h"

namespace dreamlora::schedulers {

namespace {
struct AlphaSigma {
  torch::Tensor alpha, sigma;
};
// sigma (VE space) -> alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t.
AlphaSigma to_alpha_sigma(const torch::Tensor& sigma) {
  // Python's `1 / tensor` is tensor.reciprocal() * 1.
  auto alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
  return {alpha_t, sigma * alpha_t};
}
torch::Tensor lambda_of(const AlphaSigma& as) {
  return torch::log(as.alpha) - torch::log(as.sigma);
}
}  // namespace

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(const SchedulerConfig& config) : Sampler(config) {
  sigmas_ = sigmas_from_alphas_cumprod(alphas_cumprod_);
  const int64_t T = config_.num_train_timesteps;
  auto ts = np::linspace(0, static_cast<double>(T - 1), T);
  std::reverse(ts.begin(), ts.end());
  timesteps_ = to_float_tensor(ts);
}

void DPMSolverMultistepScheduler::set_timesteps(int64_t n) {
  const int64_t T = config_.num_train_timesteps;
  DL_CHECK(n >= 1 && n <= T, class_name(), ": num_inference_steps must be in [1, ", T, "], got ", n);
  // Training timesteps whose log-SNR lies below lambda_min_clipped are never sampled.
  auto lambda_t = torch::log(torch::sqrt(alphas_cumprod_)) - torch::log(torch::sqrt(1 - alphas_cumprod_));
  const int64_t clipped_idx =
      torch::searchsorted(torch::flip(lambda_t, {0}),
                          torch::tensor(config_.lambda_min_clipped, torch::kFloat64).to(torch::kFloat32))
          .item<int64_t>();
  const int64_t last_timestep = T - clipped_idx;

  // diffusers computes n + 1 points and drops the last one.
  auto ts = spaced_timesteps(config_, n, {last_timestep, /*extra_points=*/1});

  const auto train_sigmas = to_doubles(sigmas_from_alphas_cumprod(alphas_cumprod_));  // float32 values
  std::vector<double> sigmas;
  if (config_.use_karras_sigmas) {
    std::vector<double> log_sigmas(train_sigmas.size());
    for (size_t i = 0; i < train_sigmas.size(); ++i)
      log_sigmas[i] = std::log(static_cast<float>(train_sigmas[i]));
    // Here the karras range spans all training sigmas (the flipped table's last/first values).
    const double sigma_min = config_.sigma_min.value_or(train_sigmas.front());
    const double sigma_max = config_.sigma_max.value_or(train_sigmas.back());
    sigmas = karras_sigmas(sigma_min, sigma_max, n);
    ts.assign(n, 0.0);
    for (int64_t i = 0; i < n; ++i) ts[i] = np::round(sigma_to_t(sigmas[i], log_sigmas));
  } else {
    sigmas = np::interp(ts, train_sigmas);
  }
  double sigma_last = 0.0;
  if (config_.final_sigmas_type == "sigma_min") {
    sigma_last = ((1 - alphas_cumprod_[0]) / alphas_cumprod_[0]).pow(0.5).item<double>();
  }
  sigmas.push_back(sigma_last);
  sigmas_ = to_float_tensor(sigmas);
  timesteps_ = to_long_tensor(ts);
  num_inference_steps_ = static_cast<int64_t>(ts.size());
  model_outputs_ = {};
  lower_order_nums_ = 0;
  step_index_ = -1;
}

torch::Tensor DPMSolverMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                const torch::Tensor& sample) const {
  const auto& type = config_.prediction_type;
  if (type == "sample") return model_output;
  auto as = to_alpha_sigma(sigmas_[step_index_]);
  if (type == "epsilon") return (sample - as.sigma * model_output) / as.alpha;
  return as.alpha * sample - as.sigma * model_output;  // v_prediction
}

torch::Tensor DPMSolverMultistepScheduler::first_order_update(const torch::Tensor& x0,
                                                              const torch::Tensor& sample) const {
  auto t = to_alpha_sigma(sigmas_[step_index_ + 1]);
  auto s = to_alpha_sigma(sigmas_[step_index_]);
  auto h = lambda_of(t) - lambda_of(s);
  return (t.sigma / s.sigma) * sample - (t.alpha * (torch::exp(-h) - 1.0)) * x0;
}

torch::Tensor DPMSolverMultistepScheduler::second_order_update(const torch::Tensor& sample) const {
  auto t = to_alpha_sigma(sigmas_[step_index_ + 1]);
  auto s0 = to_alpha_sigma(sigmas_[step_index_]);
  auto s1 = to_alpha_sigma(sigmas_[step_index_ - 1]);
  auto lambda_t = lambda_of(t), lambda_s0 = lambda_of(s0), lambda_s1 = lambda_of(s1);
  const auto& m0 = model_outputs_[1];
  const auto& m1 = model_outputs_[0];
  auto h = lambda_t - lambda_s0;
  auto h_0 = lambda_s0 - lambda_s1;
  auto r0 = h_0 / h;
  const auto& D0 = m0;
  auto D1 = (r0.reciprocal() * 1.0) * (m0 - m1);  // Python's (1.0 / r0)
  auto phi = t.alpha * (torch::exp(-h) - 1.0);
  if (config_.solver_type == "midpoint") {
    return (t.sigma / s0.sigma) * sample - phi * D0 - 0.5 * phi * D1;
  }
  // heun
  return (t.sigma / s0.sigma) * sample - phi * D0 + (t.alpha * ((torch::exp(-h) - 1.0) / h + 1.0)) * D1;
}

StepOutput DPMSolverMultistepScheduler::step(
    const torch::Tensor& model_output, double timestep, const torch::Tensor& sample_in,
    c10::optional<at::Generator> /*generator: unused by dpmsolver++*/) {
  // model_output, sample: [B, C, H, W]
  DL_CHECK(num_inference_steps_ > 0, class_name(), ": call set_timesteps before step");
  if (step_index_ < 0) step_index_ = index_for_timestep(timestep, /*last_if_missing=*/true);
  DL_CHECK(step_index_ + 1 < sigmas_.size(0), class_name(), ": step called after the last timestep");
  const auto n = timesteps_.size(0);
  const bool lower_order_final =
      step_index_ == n - 1 && (config_.euler_at_final || (config_.lower_order_final && n < 15) ||
                               config_.final_sigmas_type == "zero");
  const bool lower_order_second = step_index_ == n - 2 && config_.lower_order_final && n < 15;
  (void)lower_order_second;  // only changes third-order steps, which are not implemented

  auto x0 = convert_model_output(model_output, sample_in);
  model_outputs_[0] = model_outputs_[1];
  model_outputs_[1] = x0;
  auto sample = sample_in.to(torch::kFloat32);

  torch::Tensor prev_sample;
  if (config_.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev_sample = first_order_update(x0, sample);
  } else {
    prev_sample = second_order_update(sample);
  }
  if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
  ++step_index_;
  return {prev_sample.to(x0.scalar_type()), x0};
}

}  // namespace dreamlora::schedulers
