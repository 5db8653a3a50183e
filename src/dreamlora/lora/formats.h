// LoRA files: the one place that knows the key layouts (diffusers DreamBooth scripts, peft, kohya for
// A1111/ComfyUI, kohya's SDXL LDM block names) and converts between them and a canonical in-memory form.
// Conv LoRA (LoCon), LyCORIS and the pre-peft diffusers "processor" layout are not read.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/convert/ldm_names.h"
#include "dreamlora/nn/linear.h"

namespace dreamlora::lora {

// Canonical form: component ("unet", "text_encoder", "text_encoder_2") -> module path in diffusers /
// transformers naming ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") -> weights.
struct LoRAModuleWeights {
  torch::Tensor down;  // A: [r, in]
  torch::Tensor up;    // B: [out, r]
  double alpha = 0;    // scale = alpha / r
  int64_t rank() const { return down.size(0); }
};
using LoRAModules = std::map<std::string, LoRAModuleWeights>;
struct LoRAWeights {
  std::map<std::string, LoRAModules> components;
  std::map<std::string, std::string> metadata;  // the file's header metadata when read
  int64_t num_modules() const;
  int64_t num_parameters() const;
};

enum class LoRAFormat { unknown, diffusers, peft, kohya };
enum class ModelFamily { unknown, sd1, sd2, sdxl };
std::string to_string(LoRAFormat format);
std::string to_string(ModelFamily family);

// The UNet's LDM block names live with the other original-layout tables (convert/ldm_names.h).
using convert::diffusers_to_ldm;
using convert::ldm_to_diffusers;
using convert::UNetLayout;

// kohya stem ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0") -> dotted path, using the
// table of module names that contain "_" (a name missing from it would be split at each "_").
std::string kohya_stem_to_path(const std::string& stem);
std::string path_to_kohya_stem(const std::string& path);

// Model -> canonical: every adapted nn::LinearWithLora of model under component.
LoRAModules collect_lora(torch::nn::Module& model);
// The same from layers already found with lora_layers().
LoRAModules collect_lora(const std::vector<std::pair<std::string, nn::LinearWithLora>>& layers);
// Canonical -> model: enables an adapter of the file's rank/alpha where none exists and copies the
// weights (cast to the adapter dtype). Modules absent from the model, or a rank that disagrees with an
// existing adapter, are an error listing them, prefixed with `what`.
void apply_lora(torch::nn::Module& model, const LoRAModules& modules, const std::string& what);

struct SaveOptions {
  int64_t rank = 0;                  // metadata only (0: taken from the weights)
  double alpha = 0;                  // metadata only (0: taken from the weights)
  std::vector<std::string> targets;  // metadata only
  // diffusers files carry no alpha and every reader uses scale 1; when alpha != rank the up weights
  // are stored multiplied by alpha/rank so the file means the same everywhere. Checkpoints that must
  // resume bit-exactly pass false (the raw weights + "dreamlora.alpha" metadata, which we honour).
  bool bake_alpha_into_up = true;
};
// pytorch_lora_weights.safetensors as diffusers' DreamBooth scripts write it (metadata format: pt).
void save_diffusers(const std::filesystem::path& path, const LoRAWeights& weights,
                    const SaveOptions& options = {});
// kohya/A1111/ComfyUI file. SDXL (a text_encoder_2 component or sdxl=true) uses lora_te1_/lora_te2_;
// ldm_layout set: UNet names in kohya's native LDM numbering (what kohya's SDXL trainer writes).
struct KohyaOptions {
  bool sdxl = false;
  std::optional<UNetLayout> ldm_layout;
  torch::ScalarType alpha_dtype =
      torch::kInt64;  // as diffusers' convert_state_dict_to_kohya; F32 if not integral
};
void save_kohya(const std::filesystem::path& path, const LoRAWeights& weights,
                const KohyaOptions& options = {}, const SaveOptions& save = {});
// In-memory conversions used by the savers (key -> tensor, sorted like the reference writer).
std::map<std::string, torch::Tensor> to_diffusers_tensors(const LoRAWeights& weights,
                                                          bool bake_alpha_into_up);
std::map<std::string, torch::Tensor> to_kohya_tensors(const LoRAWeights& weights,
                                                      const KohyaOptions& options);

// Any supported file -> canonical. LDM-named kohya UNet keys need a layout (default: SDXL base).
// Keys that fit no layout are an error listing the first of them.
LoRAWeights load_lora_file(const std::filesystem::path& path, const std::optional<UNetLayout>& layout = {});
LoRAWeights parse_lora_tensors(const std::map<std::string, torch::Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata, const std::string& what,
                               const std::optional<UNetLayout>& layout = {});
LoRAFormat detect_format(const std::vector<std::string>& keys);

struct LoRAFileInfo {
  std::string path;
  LoRAFormat format = LoRAFormat::unknown;
  bool ldm_names = false;  // kohya UNet keys in LDM numbering
  ModelFamily family = ModelFamily::unknown;
  std::string family_reason;               // which key/shape decided the guess
  std::map<std::string, int64_t> modules;  // component -> adapted modules
  std::vector<int64_t> ranks;              // distinct
  std::vector<double> alphas;              // distinct
  std::vector<std::string> targets;        // distinct leaf names (to_q, to_out.0, q_proj, ...)
  int64_t num_tensors = 0;
  int64_t num_parameters = 0;             // elements of down/up weights
  std::string dtype;                      // of the down/up weights
  std::vector<std::string> unknown_keys;  // the first keys that fit no known model (max 10)
  int64_t num_unknown_keys = 0;
  std::map<std::string, std::string> metadata;
  std::string to_string() const;  // multi-line, for `dreamlora inspect`
};
LoRAFileInfo describe_lora_file(const std::filesystem::path& path);

}  // namespace dreamlora::lora
