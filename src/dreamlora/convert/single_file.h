// Single-file Stable Diffusion checkpoints in the original layout (AUTOMATIC1111 / ComfyUI / model sites):
// which family a file is, and which of its tensors fills each diffusers/transformers parameter.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "dreamlora/convert/ldm_names.h"
#include "dreamlora/io/safetensors.h"

namespace dreamlora::convert {

enum class CheckpointFamily { sd1, sd2, sdxl };
std::string to_string(CheckpointFamily family);

struct FamilyDetection {
  CheckpointFamily family = CheckpointFamily::sd1;
  std::string reason;         // the keys/shapes that decided it
  bool v_prediction = false;  // diffusers' rule: SD2.x files are v-prediction unless told otherwise
  bool inpainting = false;    // UNet input has 9 channels
};
// Throws naming what the file holds when it is not an SD1.x / SD2.x / SDXL base checkpoint.
FamilyDetection detect_family(const io::safetensors::File& file);

// Key prefix of each component in the file: "unet", "vae", "text_encoder", "text_encoder_2".
std::map<std::string, std::string> component_prefixes(CheckpointFamily family);

struct SourceTensor {
  std::string key;  // name in the file
  TensorChange change = TensorChange::none;
  int part = 0;
};
using ComponentSources = std::map<std::string, SourceTensor>;  // diffusers/transformers name -> source

struct SingleFileSources {
  std::map<std::string, ComponentSources> components;  // "unet", "vae", "text_encoder", "text_encoder_2"
  std::vector<std::string> ignored;  // keys diffusers ignores too (EMA, schedule buffers, ...)
};

// Maps every key of the file; keys that fit no component (and are not ones diffusers ignores) are one error
// listing them. vae_blocks = len(block_out_channels) of the VAE.
SingleFileSources map_single_file(const io::safetensors::File& file, CheckpointFamily family,
                                  const UNetLayout& unet_layout, int64_t vae_blocks);

// What `inspect` prints for a single-file checkpoint: family, the reason, tensors per component; "" when
// the file is not one (no UNet keys in the original layout).
std::string describe_single_file(const io::safetensors::File& file);

// The tensor a source names, as a view of the mapped file where possible (transposes and q/k/v parts too).
torch::Tensor read_source(const io::safetensors::File& file, const SourceTensor& source);

}  // namespace dreamlora::convert
