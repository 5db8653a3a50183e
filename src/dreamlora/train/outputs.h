// What a finished run leaves in --output-dir: the LoRA in diffusers and/or kohya format, a model card
// (README.md) and the header metadata both files carry.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "dreamlora/lora/formats.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

// safetensors metadata of our LoRA files: format pt (diffusers reads it) plus rank, alpha, targets, base.
std::map<std::string, std::string> lora_metadata(const TrainConfig& config, bool alpha_baked);

// The result of the run: the LoRA files of --save-format. Written before anything optional.
void write_final_lora(const std::filesystem::path& out, const TrainConfig& config,
                      const pipeline::ModelBundle& model, const lora::LoRAWeights& weights);
// README.md, showing the newest validation image when there is one.
void write_model_card(const std::filesystem::path& out, const TrainConfig& config, bool sdxl);

// The files a finished run leaves beside its checkpoints that exist in `out`, as paths relative to it:
// the LoRA files, model card, loss curve, metrics, training config, then validation/*.png by name.
std::vector<std::string> final_output_files(const std::filesystem::path& out);

std::string model_card(const TrainConfig& config, bool sdxl, const std::string& sample_image);

}  // namespace dreamlora::train
