// diffusers' DPMSolverMultistepScheduler with algorithm_type "dpmsolver++" (DPM-Solver++ 2M by default,
// solver_order 1 or 2, midpoint or heun), optional Karras sigmas. Not implemented: SDE variants,
// third order, dynamic thresholding, Lu lambdas.
#pragma once

#include <array>

#include "dreamlora/schedulers/sampler.h"

namespace dreamlora::schedulers {

class DPMSolverMultistepScheduler : public Sampler {
 public:
  explicit DPMSolverMultistepScheduler(const SchedulerConfig& config);

  std::string class_name() const override { return kDPMSolverMultistep; }
  void set_timesteps(int64_t num_inference_steps) override;
  StepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                  c10::optional<at::Generator> generator = c10::nullopt) override;
  // [n + 1] float32; the last is 0 (final_sigmas_type "zero") or the smallest training sigma.
  const torch::Tensor& sigmas() const { return sigmas_; }

 private:
  // The model output converted to a data prediction x_0 (dpmsolver++ works in x_0 space).
  torch::Tensor convert_model_output(const torch::Tensor& model_output, const torch::Tensor& sample) const;
  torch::Tensor first_order_update(const torch::Tensor& x0, const torch::Tensor& sample) const;
  torch::Tensor second_order_update(const torch::Tensor& sample) const;

  torch::Tensor sigmas_;
  std::array<torch::Tensor, 2> model_outputs_;  // [0] previous x_0, [1] current
  int64_t lower_order_nums_ = 0;
  int64_t step_index_ = -1;
};

}  // namespace dreamlora::schedulers
