// Full-size pipelines with the published architectures of runwayml/stable-diffusion-v1-5,
// stabilityai/stable-diffusion-2-1-base, stabilityai/stable-diffusion-2-1 (v-prediction) and
// stabilityai/stable-diffusion-xl-base-1.0, with random weights: for benchmarks and tests, never for images.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dreamlora::synth {

struct ModelPresetOptions {
  std::string preset;                    // sd15 | sd21 | sd21-v | sdxl
  torch::Dtype dtype = torch::kFloat16;  // of the written weights
  bool single_file = false;              // one original-layout .safetensors (+ the configs beside it)
  std::filesystem::path tokenizer;       // a CLIP BPE tokenizer folder with the real 49408-token vocabulary
  uint64_t seed = 0;
};

std::vector<std::string> model_preset_names();

// Writes a diffusers pipeline folder at out. With single_file, out/model.safetensors holds every weight in
// the original layout and out/config/ is the diffusers folder without weights, for --model-config.
// Components are built and written one at a time in the target dtype (peak memory about the largest
// component). Returns the bytes of weights written.
uint64_t write_model_preset(const std::filesystem::path& out, const ModelPresetOptions& options);

}  // namespace dreamlora::synth
