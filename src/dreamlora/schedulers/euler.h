// diffusers' EulerDiscreteScheduler (optionally with Karras sigmas) and EulerAncestralDiscreteScheduler:
// samplers in sigma space, where the UNet input is sample / sqrt(sigma^2 + 1).
// Not implemented: s_churn (stochastic Euler), log_linear interpolation, continuous timesteps.
#pragma once

#include "dreamlora/schedulers/sampler.h"

namespace dreamlora::schedulers {

// The state both Euler samplers share: sigma schedule, timesteps and the step counter.
class EulerSamplerBase : public Sampler {
 public:
  explicit EulerSamplerBase(const SchedulerConfig& config);

  void set_timesteps(int64_t num_inference_steps) override;
  double init_noise_sigma() const override;
  torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep) override;
  // [n + 1] float32, the last one 0.
  const torch::Tensor& sigmas() const { return sigmas_; }

 protected:
  // Sets step_index_ from timestep on the first call after set_timesteps.
  void init_step_index(double timestep);
  // x_0 from the model output at sigma (epsilon / v_prediction / sample).
  torch::Tensor pred_original(const torch::Tensor& model_output, const torch::Tensor& sample,
                              const torch::Tensor& sigma) const;

  torch::Tensor sigmas_;
  int64_t step_index_ = -1;  // -1 = not started
};

class EulerDiscreteScheduler : public EulerSamplerBase {
 public:
  using EulerSamplerBase::EulerSamplerBase;
  std::string class_name() const override { return kEuler; }
  StepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt) override;
};

class EulerAncestralDiscreteScheduler : public EulerSamplerBase {
 public:
  using EulerSamplerBase::EulerSamplerBase;
  std::string class_name() const override { return kEulerAncestral; }
  StepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt) override;
};

}  // namespace dreamlora::schedulers
