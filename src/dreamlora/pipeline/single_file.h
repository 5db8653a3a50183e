// Single-file checkpoints (original LDM/SGM layout) loaded as a ModelBundle. The architecture comes from
// a diffusers folder given as --model-config (its */config.json and tokenizers), as diffusers'
// from_single_file(path, config=DIR) does.
#pragma once

#include <filesystem>
#include <string>

#include "dreamlora/convert/single_file.h"
#include "dreamlora/pipeline/model_bundle.h"

namespace dreamlora::pipeline {

bool is_single_file_checkpoint(const std::filesystem::path& model);

class SingleFileCheckpoint {
 public:
  // Opens the file, detects its family and checks config_dir against it (config_dir "" is an error
  // saying what was detected and what to pass).
  static SingleFileCheckpoint open(const std::filesystem::path& file,
                                   const std::filesystem::path& config_dir);

  const convert::FamilyDetection& detection() const { return detection_; }
  const std::filesystem::path& config_dir() const { return config_dir_; }
  unet::UNet2DConditionModel unet(torch::Dtype dtype) const;
  vae::AutoencoderKL vae(torch::Dtype dtype) const;
  text::CLIPTextModel text_encoder(const std::string& component,
                                   torch::Dtype dtype) const;  // text_encoder(_2)
  ModelBundle bundle(const LoadOptions& options) const;

 private:
  std::filesystem::path path_, config_dir_;
  io::safetensors::File file_;
  convert::FamilyDetection detection_;
  convert::SingleFileSources sources_;
};

}  // namespace dreamlora::pipeline
