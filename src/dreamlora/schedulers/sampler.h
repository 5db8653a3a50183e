// The common interface of the inference samplers (DDIM, Euler, Euler ancestral, DPM-Solver++ 2M) and
// the factory that builds one by its short name from a pipeline's scheduler_config.json.
// Usage, as diffusers' pipelines:
//   s->set_timesteps(n); latents *= s->init_noise_sigma();
//   for t in s->timesteps(): eps = unet(s->scale_model_input(latents, t), t); latents = s->step(eps, t,
//   latents).prev_sample
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "dreamlora/schedulers/scheduler_config.h"

namespace dreamlora::schedulers {

struct StepOutput {
  torch::Tensor prev_sample;           // x_{t-1}, the next loop input
  torch::Tensor pred_original_sample;  // the model's x_0 estimate at this step
};

class Sampler {
 public:
  explicit Sampler(const SchedulerConfig& config);
  virtual ~Sampler() = default;

  // diffusers class name ("DDIMScheduler", ...).
  virtual std::string class_name() const = 0;
  // Chooses num_inference_steps timesteps by config.timestep_spacing / steps_offset; resets the state.
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // The timesteps to run, first to last: int64 (DDIM, DPM-Solver) or float32 (Euler). [n]
  const torch::Tensor& timesteps() const { return timesteps_; }
  // Scale of the initial noise: latents = randn * init_noise_sigma().
  virtual double init_noise_sigma() const { return 1.0; }
  // The UNet input for sample at timestep (identity except for the sigma-space samplers). [B, C, H, W]
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep) { return sample; }
  // One denoising step from sample at timestep given the UNet output. generator feeds the samplers
  // that draw noise (Euler draws and discards it, as diffusers does, so shared generators stay in step).
  virtual StepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                          c10::optional<at::Generator> generator = c10::nullopt) = 0;

  const SchedulerConfig& config() const { return config_; }
  const torch::Tensor& betas() const { return betas_; }                    // [T] float32
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // [T] float32
  int64_t num_inference_steps() const { return num_inference_steps_; }

 protected:
  // The index of timestep in timesteps_ (the second match when it repeats, as diffusers).
  // Not found: error, or the last index when last_if_missing (DPM-Solver's rule).
  int64_t index_for_timestep(double timestep, bool last_if_missing = false) const;

  SchedulerConfig config_;
  torch::Tensor betas_, alphas_cumprod_;
  torch::Tensor timesteps_;
  int64_t num_inference_steps_ = 0;
};

// Names: "ddim", "euler", "euler-a", "dpmpp-2m", "euler-karras", "dpmpp-2m-karras" (the last two
// force use_karras_sigmas), or a diffusers class name. config_json: scheduler_config.json of any class.
std::unique_ptr<Sampler> make_sampler(const std::string& name, const io::Json& config_json,
                                      const std::string& source = "scheduler_config.json");
std::unique_ptr<Sampler> make_sampler(const std::string& name, const std::filesystem::path& config_file);
// The short names make_sampler accepts.
std::vector<std::string> sampler_names();

}  // namespace dreamlora::schedulers
