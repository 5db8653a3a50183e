// diffusers' DDIMScheduler as a deterministic sampler (eta = 0, the pipelines' default). clip_sample is
// honoured; dynamic thresholding and eta > 0 are not implemented.
#pragma once

#include "dreamlora/schedulers/sampler.h"

namespace dreamlora::schedulers {

class DDIMScheduler : public Sampler {
 public:
  explicit DDIMScheduler(const SchedulerConfig& config);

  std::string class_name() const override { return kDDIM; }
  void set_timesteps(int64_t num_inference_steps) override;
  StepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt) override;

 private:
  torch::Tensor final_alpha_cumprod_;  // 0-dim: 1.0 (set_alpha_to_one) or alphas_cumprod[0]
};

}  // namespace dreamlora::schedulers
