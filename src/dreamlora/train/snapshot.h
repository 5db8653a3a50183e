// The training state a checkpoint holds, and back: the LoRA weights (diffusers keys, un-baked up weights),
// the AdamW moments and step count, the loss scaler, and trainer_state.json with the default generators'
// states. Capturing runs on the training thread and costs two concatenations; naming, splitting and
// serialising run later in the payload's `prepare`, on the checkpoint writer's thread.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/nn/linear.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/loss_scaler.h"
#include "dreamlora/train/optimizer.h"
#include "dreamlora/train/trainer_state.h"

namespace dreamlora::train {

// The LoRA layers being trained, by component (unet, text_encoder, text_encoder_2), each as (path, layer).
using LoRALayers = std::map<std::string, std::vector<std::pair<std::string, nn::LinearWithLora>>>;

// Views of the trainable tensors in checkpoint order, made once: they follow the in-place updates, so a
// capture is one torch::cat per kind whatever the number of layers.
struct SnapshotLayout {
  struct Module {
    std::string component, path;
    double alpha;
  };
  std::vector<Module> lora_modules;
  std::vector<torch::Tensor> lora_views, moment_views;  // flattened views of the live tensors
  std::vector<std::vector<int64_t>> lora_shapes, moment_shapes;
  std::vector<std::string> moment_names;

  // Once the LoRA layers are injected and the optimizer is made: both are updated in place from then on.
  static std::shared_ptr<const SnapshotLayout> make(const LoRALayers& layers, const Optimizer& optimizer);
};

struct SnapshotInputs {
  TrainerState state;  // world_size and fingerprint already set; the RNG states are captured here
  std::map<std::string, std::string> optimizer_metadata;  // loss scaler; the step count is added
  std::map<std::string, std::string> lora_metadata;       // header of pytorch_lora_weights.safetensors
  torch::Device device = torch::kCPU;                     // CUDA: its default generator's state too
};

// A checkpoint payload of the current values (pytorch_lora_weights.safetensors, optimizer.safetensors,
// trainer_state.json). On CUDA the copies to the host are asynchronous; `prepare` waits for them.
checkpoint::CheckpointContents capture_snapshot(const std::shared_ptr<const SnapshotLayout>& layout,
                                                const Optimizer& optimizer, SnapshotInputs inputs);

// The default generators' states into / from a TrainerState (base64 of libtorch's state bytes).
void capture_rng_states(TrainerState& state, torch::Device device);
void restore_rng_states(const TrainerState& state, torch::Device device);

// Loads checkpoint `dir` into the injected LoRA layers (unet; text encoders when trained), the optimizer,
// the loss scaler and the default generators. `state` is the checkpoint's trainer_state.json.
void restore_snapshot(const std::filesystem::path& dir, const TrainerState& state,
                      pipeline::ModelBundle& model, bool train_text_encoder, Optimizer& optimizer,
                      LossScaler& scaler, torch::Device device);

// The trained LoRA weights (alpha as trained, up weights not baked), copied to fp32 on the CPU.
lora::LoRAWeights copy_lora_weights(const LoRALayers& layers);

// Views of consecutive pieces of a flat tensor, one per shape.
std::vector<torch::Tensor> split_flat(const torch::Tensor& flat,
                                      const std::vector<std::vector<int64_t>>& shapes);

}  // namespace dreamlora::train
