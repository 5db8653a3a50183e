#include "dreamlora/train/training_step.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "dreamlora/train/host_copy.h"

namespace dreamlora::train {

MicroBatch stack_samples(const std::vector<TrainingSample>& samples) {
  std::vector<torch::Tensor> means, stds, eps, noises, input_noises, time_ids;
  std::vector<int64_t> timesteps;
  MicroBatch b;
  for (const auto& s : samples) {
    means.push_back(s.example.latent_mean);
    stds.push_back(s.example.latent_std);
    eps.push_back(s.eps);
    noises.push_back(s.noise);
    if (s.input_noise.defined() && !s.input_noise.is_same(s.noise)) input_noises.push_back(s.input_noise);
    timesteps.push_back(s.timestep);
    if (s.example.time_ids.defined()) time_ids.push_back(s.example.time_ids);
    b.captions.push_back(s.example.caption);
  }
  b.latent_mean = torch::stack(means);
  b.latent_std = torch::stack(stds);
  b.eps = torch::stack(eps);
  b.noise = torch::stack(noises);
  if (input_noises.size() == samples.size()) b.input_noise = torch::stack(input_noises);
  b.timesteps = torch::tensor(timesteps, torch::kInt64);
  if (time_ids.size() == samples.size()) b.time_ids = torch::stack(time_ids);
  return b;
}

namespace {
// Test hook DREAMLORA_TEST_BROKEN_LOSS=1: the loss compares the prediction with the wrong target (the
// clean latents; the noise for prediction_type "sample"), so the learning test can show it notices.
bool broken_loss_for_tests() {
  static const bool broken = [] {
    const char* v = std::getenv("DREAMLORA_TEST_BROKEN_LOSS");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return broken;
}
}  // namespace

LossParts micro_batch_loss(const StepParts& p, const MicroBatch& b, const StepOptions& o) {
  const double scaling = p.model.vae->config().scaling_factor;
  const double shift = p.model.vae->config().shift_factor.value_or(0.0);
  // latents ~ VAE posterior, scaled like the pipeline's latents: [B, C, h, w]
  auto latents = ((b.latent_mean + b.latent_std * b.eps) - shift) * scaling;
  // noise + timesteps -> noisy latents
  auto timesteps = train::to_device_async(b.timesteps, p.device);
  auto noisy = p.ddpm.add_noise(latents, b.input_noise.defined() ? b.input_noise : b.noise, timesteps);
  // predict
  auto emb = p.embedder.embed(p.model, b.captions);
  torch::Tensor pooled, time_ids;
  if (p.model.sdxl) {
    pooled = emb.pooled_prompt_embeds.to(p.device, p.dtype);
    time_ids = train::to_device_async(b.time_ids, p.device).to(p.dtype);
  }
  auto pred = p.model.unet->forward(noisy.to(p.device, p.dtype), timesteps,
                                    emb.prompt_embeds.to(p.device, p.dtype), pooled, time_ids);
  // target by prediction type, loss (+ prior; Min-SNR weights for the instance half)
  auto target = p.ddpm.training_target(latents, b.noise, timesteps);
  if (broken_loss_for_tests()) target = p.ddpm.prediction_type() == "sample" ? b.noise : latents;
  torch::Tensor snr_weights;
  if (o.snr_gamma > 0) {
    auto weights = min_snr_weights(p.ddpm.snr(b.timesteps.slice(0, 0, o.instance_count)), o.snr_gamma,
                                   p.ddpm.prediction_type());
    snr_weights = train::to_device_async(weights, p.device);
  }
  return dreambooth_loss(pred, target, o.prior_preservation, o.prior_loss_weight, snr_weights);
}

StepOutcome training_step(const StepParts& p, const StepOptions& o,
                          const std::function<MicroBatch()>& next_micro_batch) {
  StepOutcome r;
  // The schedule counts optimizer steps taken: a step the loss scaler skips does not advance it (as
  // accelerate's scheduler after a skipped GradScaler step). Without fp16 this is the global step.
  r.lr_multiplier = lr_multiplier(o.schedule, o.base_lr, p.optimizer.step_count());
  torch::Tensor loss_sum;  // fp32, on the device
  for (int64_t micro = 0; micro < o.gradient_accumulation; ++micro) {
    auto loss = micro_batch_loss(p, next_micro_batch(), o);
    p.scaler.scale(loss.total / static_cast<double>(o.gradient_accumulation)).backward();
    loss_sum = loss_sum.defined() ? loss_sum + loss.total.detach() : loss.total.detach();
  }
  p.dist.average_gradients(trainable_parameters(p.optimizer));
  if (o.poison_gradients) p.optimizer.gradients().front().fill_(NAN);
  // unscale (fp16) -> skip on inf/nan, else clip -> AdamW; gradients are the same on every worker here,
  // so every worker makes the same decision.
  r.skipped = p.scaler.unscale_and_check(p.optimizer.gradients());
  if (!r.skipped) {
    if (o.max_grad_norm > 0) p.optimizer.clip_grad_norm(o.max_grad_norm);
    p.optimizer.step(r.lr_multiplier);
  }
  p.scaler.update(r.skipped);
  p.optimizer.zero_grad();
  r.loss = loss_sum / static_cast<double>(o.gradient_accumulation);
  return r;
}

std::vector<torch::Tensor> trainable_parameters(const Optimizer& optimizer) {
  std::vector<torch::Tensor> out;
  for (const auto& g : optimizer.groups())
    for (const auto& [name, p] : g.params) out.push_back(p);
  return out;
}

}  // namespace dreamlora::train
