// One pipeline component on named tensors (the engine behind `dreamlora run-component` and the parity
// tests that go through it). Names follow the Python forward arguments.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace dreamlora::pipeline {

struct ComponentRunArgs {
  std::string model, model_config, component, inputs, prompts, out, lora, variant;
  double lora_scale = 1.0;
};

// tokenizer / tokenizer_2: prompts -> input_ids, attention_mask.
// text_encoder / text_encoder_2: input_ids -> last_hidden_state, penultimate_hidden_state, pooler_output
//   (CLIPTextModel) or text_embeds (WithProjection).
// unet: sample, timestep, encoder_hidden_states [, text_embeds, time_ids] -> sample.
// vae_encoder: sample -> mean, logvar.  vae_decoder: latents -> sample.
std::map<std::string, torch::Tensor> run_component(const ComponentRunArgs& args);

// Applies a LoRA file (any supported format) to the matching components of a loaded model, merged at scale.
struct ModelBundle;
void apply_lora_file(ModelBundle& model, const std::string& path, double scale);

}  // namespace dreamlora::pipeline
