// One optimizer step of DreamBooth LoRA training, written as the math: per micro-batch latents from the VAE
// posterior, noise and timesteps, add_noise, the UNet's prediction, the target of the prediction type, the
// loss (+ prior term, Min-SNR) and backward; then gradients averaged over workers, (fp16) unscale and skip
// on inf/nan, clip, AdamW at the scheduled learning rate.
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/schedulers/ddpm.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/distributed.h"
#include "dreamlora/train/loss_scaler.h"
#include "dreamlora/train/losses.h"
#include "dreamlora/train/lr_schedule.h"
#include "dreamlora/train/optimizer.h"
#include "dreamlora/train/sample_draws.h"

namespace dreamlora::train {

// One micro-batch, stacked: the instance samples, then as many class samples (prior preservation).
struct MicroBatch {
  torch::Tensor latent_mean, latent_std;  // [B, C, h, w], unscaled VAE posterior, on the device
  torch::Tensor eps, noise;               // [B, C, h, w], on the device; noise is the target
  torch::Tensor input_noise;              // noise in the UNet's input (differs with --input-perturbation)
  torch::Tensor timesteps;                // [B] int64, on the CPU
  torch::Tensor time_ids;                 // [B, 6] SDXL micro-conditioning, on the CPU
  std::vector<std::string> captions;
};

MicroBatch stack_samples(const std::vector<TrainingSample>& samples);

// What the forward pass reads and the update writes. Not owned.
struct StepParts {
  pipeline::ModelBundle& model;
  schedulers::DDPMScheduler& ddpm;
  CaptionEmbedder& embedder;
  Optimizer& optimizer;
  LossScaler& scaler;
  Distributed& dist;
  torch::Device device;
  torch::Dtype dtype;  // of the frozen weights: the UNet's inputs are cast to it
};

struct StepOptions {
  int64_t gradient_accumulation = 1;
  int64_t instance_count = 1;  // samples of each micro-batch from the instance stream (the rest are class)
  bool prior_preservation = false;
  double prior_loss_weight = 1.0;
  double snr_gamma = 0;      // 0: plain MSE
  double max_grad_norm = 0;  // 0: no clipping
  double base_lr = 0;
  LRScheduleOptions schedule;
  bool poison_gradients = false;  // test hook (DREAMLORA_TEST_LOSS_SCALER): NaN gradients this step
};

// The loss of one micro-batch, fp32 on the device, with its graph.
LossParts micro_batch_loss(const StepParts& parts, const MicroBatch& batch, const StepOptions& options);

struct StepOutcome {
  torch::Tensor loss;  // mean over the micro-batches, 0-dim fp32 on the device (detached)
  double lr_multiplier = 1;
  bool skipped = false;  // inf/nan in the fp16 gradients: no AdamW update
};

// gradient_accumulation micro-batches from next_micro_batch (this worker's share of each global batch),
// then the update. Nothing here reads the device except the fp16 overflow flag.
StepOutcome training_step(const StepParts& parts, const StepOptions& options,
                          const std::function<MicroBatch()>& next_micro_batch);

// Every tensor the optimizer updates, in its order.
std::vector<torch::Tensor> trainable_parameters(const Optimizer& optimizer);

}  // namespace dreamlora::train
