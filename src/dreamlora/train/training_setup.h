// What a run is built from before its first step: the data (instance and class images, their visiting
// orders, the caption embedder), LoRA layers injected into the model, the optimizer, the LR schedule and
// the loss scaler.
#pragma once

#include <torch/types.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/data_order.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/distributed.h"
#include "dreamlora/train/loss_scaler.h"
#include "dreamlora/train/lr_schedule.h"
#include "dreamlora/train/optimizer.h"
#include "dreamlora/train/snapshot.h"
#include "dreamlora/train/train_config.h"
#include "dreamlora/train/training_step.h"

namespace dreamlora::train {

// The dtype of the frozen weights for --mixed-precision (no, fp16, bf16).
torch::Dtype weight_dtype(const std::string& mixed_precision);

// --device, checked against this build of libtorch, with --deterministic / --allow-tf32 applied.
torch::Device training_device(const TrainConfig& config);

// The base model (--model, --variant) with its frozen weights in the --mixed-precision dtype on device.
pipeline::ModelBundle load_base_model(const TrainConfig& config, torch::Device device);

// The training noise schedule: DDPMScheduler over the model's scheduler config, which carries
// --prediction-type when it is given (pipeline::LoadOptions::prediction_type).
schedulers::DDPMScheduler training_noise_schedule(const pipeline::ModelBundle& model);

struct TrainingData {
  std::vector<TrainingImage> instance_images, class_images;  // as listed (instances before --repeats)
  std::unique_ptr<ImageSet> instances, classes;              // classes: null without prior preservation
  std::unique_ptr<DataOrder> instance_order, class_order;
  std::unique_ptr<CaptionEmbedder> embedder;  // caches embeddings while encoders are frozen
};

// The instance images (x --repeats) and their order; errors name the folder and come before the slow model
// load. With --epochs, sets config.num_steps to the optimizer steps that visit every image that often.
TrainingData load_instance_data(TrainConfig& config, int world_size);

// Prior preservation: each worker generates its share of the missing class images, all wait for the
// full set, then the first --num-class-images of them become the class set.
void load_class_data(TrainingData& data, pipeline::ModelBundle& model, const TrainConfig& config,
                     Distributed& dist);

// --cache-latents: every instance and class image encoded now, its pixels released (timed in the log).
// --cache-latents-to-disk: the entries of <output-dir>/latent-cache that match are loaded instead, the
// others encoded and written (by the main worker), with the counts and the reasons for rewrites logged.
void cache_all_latents(TrainingData& data, pipeline::ModelBundle& model, const TrainConfig& config,
                       bool main_worker);

// Frozen text encoders and no validation prompt: embeds every caption of the run now and frees the
// tokenizers and encoders.
void release_text_encoders(pipeline::ModelBundle& model, TrainingData& data);

// LoRA layers (--rank, --lora-alpha, --lora-dropout, the target lists) on the UNet and, with
// --train-text-encoder, the text encoder(s); everything else frozen; the UNet on `device` in training mode.
void inject_training_lora(pipeline::ModelBundle& model, const TrainConfig& config, torch::Device device);

// The injected LoRA layers by component (unet; text_encoder, text_encoder_2 when they are trained).
LoRALayers find_lora_layers(pipeline::ModelBundle& model, bool train_text_encoder);

// AdamW over the LoRA parameters: one group for the UNet, one for the text encoder(s) at their own LR.
std::unique_ptr<Optimizer> make_training_optimizer(pipeline::ModelBundle& model, const TrainConfig& config);

LRScheduleOptions lr_schedule_options(const TrainConfig& config);

// The step's settings from the flags (poison_gradients false).
StepOptions step_options(const TrainConfig& config, bool prior_preservation);

struct LossScaling {
  std::unique_ptr<LossScaler> scaler;
  std::set<int64_t> poisoned_steps;  // test hook DREAMLORA_TEST_LOSS_SCALER: 1-based steps with NaN gradients
};

// fp16 gradients underflow without a loss scale; bf16 has fp32's exponent range and needs none.
LossScaling make_loss_scaling(const TrainConfig& config);

}  // namespace dreamlora::train
