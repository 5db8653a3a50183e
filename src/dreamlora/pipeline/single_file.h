// Single-file checkpoints (original LDM/SGM layout) loaded as a ModelBundle. The architecture comes from
// a diffusers folder given as --model-config (its */config.json and tokenizers), as diffusers'
// from_single_file(path, config=DIR) does, or, without one, from the standard configs of the detected
// family (convert/standard_configs.h) with the CLIP BPE files of --tokenizer DIR.
#pragma once

#include <filesystem>
#include <string>

#include "dreamlora/convert/single_file.h"
#include "dreamlora/pipeline/model_bundle.h"

namespace dreamlora::pipeline {

bool is_single_file_checkpoint(const std::filesystem::path& model);

struct SingleFileOptions {
  std::filesystem::path config_dir;  // --model-config: "" = the standard configs of the detected family
  std::filesystem::path tokenizer;  // --tokenizer: CLIP BPE files (vocab.json, merges.txt) without config_dir
  std::string prediction_type;      // --prediction-type: "" = from config_dir, else the detection rule
};

class SingleFileCheckpoint {
 public:
  // Opens the file, detects its family and checks the configs against it: config_dir of another family,
  // or (without one) a file whose shapes are not those of its family's standard architecture, is an
  // error saying what was detected and what to pass.
  static SingleFileCheckpoint open(const std::filesystem::path& file, const SingleFileOptions& options);
  static SingleFileCheckpoint open(const std::filesystem::path& file,
                                   const std::filesystem::path& config_dir) {
    return open(file, SingleFileOptions{config_dir, {}, {}});
  }

  const convert::FamilyDetection& detection() const { return detection_; }
  const std::filesystem::path& config_dir() const { return options_.config_dir; }
  // Where the configs came from: the --model-config folder or the standard repository's name.
  const std::string& config_source() const { return config_source_; }
  unet::UNet2DConditionModel unet(torch::Dtype dtype) const;
  vae::AutoencoderKL vae(torch::Dtype dtype) const;
  text::CLIPTextModel text_encoder(const std::string& component,
                                   torch::Dtype dtype) const;  // text_encoder(_2)
  ModelBundle bundle(const LoadOptions& options) const;

 private:
  text::CLIPTokenizer tokenizer(const std::string& component) const;
  std::filesystem::path path_;
  SingleFileOptions options_;
  std::string config_source_;
  io::Json unet_json_, vae_json_, scheduler_json_;
  std::map<std::string, io::Json> text_encoder_json_;
  std::map<std::string, std::string> tokenizer_pad_;  // standard configs: pad token per tokenizer folder
  io::safetensors::File file_;
  convert::FamilyDetection detection_;
  convert::SingleFileSources sources_;
};

}  // namespace dreamlora::pipeline
