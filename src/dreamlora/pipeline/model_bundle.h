// A diffusers pipeline folder loaded for training or sampling: tokenizer(s), text encoder(s), UNet, VAE
// and the scheduler config, all frozen, in the requested dtype on the requested device.
#pragma once

#include <filesystem>
#include <string>

#include "dreamlora/io/json.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/text/text_embeddings.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"

namespace dreamlora::pipeline {

struct LoadOptions {
  std::string variant;                   // "" or e.g. "fp16"
  torch::Dtype dtype = torch::kFloat32;  // frozen weights (UNet, text encoders)
  torch::Device device = torch::kCPU;
  // Single-file checkpoints: the diffusers folder whose configs and tokenizers describe the architecture
  // ("" = the standard configs of the detected family), and CLIP BPE files when it is not given.
  std::filesystem::path model_config, tokenizer;
  // "" or epsilon | v_prediction: replaces the scheduler config's prediction_type (--prediction-type);
  // for a single-file SD2.x checkpoint without model_config it also picks 2-1 (v) or 2-1-base (epsilon).
  std::string prediction_type;
};

struct ModelBundle {
  std::filesystem::path root;
  bool sdxl = false;
  text::TextEncoders text;
  unet::UNet2DConditionModel unet{nullptr};
  vae::AutoencoderKL vae{nullptr};
  io::Json scheduler_config;
  std::filesystem::path scheduler_config_path;  // "" for the built-in configs of a single file

  // root: a diffusers pipeline folder, or a single-file checkpoint (original layout, see single_file.h).
  static ModelBundle load(const std::filesystem::path& root, const LoadOptions& options);
  // Latent channels and the pixel/latent size ratio (8 for real SD, 2 for the tiny models).
  int64_t vae_scale_factor() const;
};

}  // namespace dreamlora::pipeline
