// Internal to the lora area: one pass over a LoRA file's keys that recognises every known layout and
// sorts the tensors into (component, diffusers module path) entries, plus the keys that fit nothing.
#pragma once

#include <torch/types.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/lora/formats.h"

namespace dreamlora::lora {

struct ParsedEntry {
  torch::Tensor down, up;
  std::optional<double> alpha;
};
struct ParsedKeys {
  std::map<std::pair<std::string, std::string>, ParsedEntry> entries;  // (component, path) -> tensors
  std::vector<std::string> unknown;                                    // keys that fit no known model
  bool ldm_names = false;                                              // kohya UNet keys in LDM numbering
};

// Recognises diffusers (".lora.down.weight", ".lora_linear_layer.down.weight"), peft ("lora_A"/"lora_B",
// optional "base_model.model." prefix and ".default" adapter name) and kohya ("lora_unet_", "lora_te_",
// "lora_te1_", "lora_te2_"; diffusers or LDM block names) keys, whatever `format` says.
ParsedKeys parse_keys(const std::map<std::string, torch::Tensor>& tensors, LoRAFormat format,
                      const UNetLayout& layout);

// Whether a module path exists in the known SD UNet / CLIP text encoder structures.
bool is_known_module(const std::string& component, const std::string& path);

// Entries -> canonical weights; alpha from the file's .alpha keys, else from our own metadata when the
// up weights are raw, else = rank (scale 1, as diffusers and kohya assume). 1x1-conv LoRA weights
// ([r, in, 1, 1]) become linear ones. Incomplete pairs are an error naming the module.
LoRAWeights assemble(const ParsedKeys& parsed, const std::map<std::string, std::string>& metadata,
                     LoRAFormat format, const std::string& what);

}  // namespace dreamlora::lora
