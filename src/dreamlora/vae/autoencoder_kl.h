// diffusers' AutoencoderKL: config, the diagonal-Gaussian latent distribution, encode/decode with
// optional slicing (one image at a time) and tiling (overlapping tiles blended linearly, for large
// images), latent scaling for the UNet, and loading from a diffusers `vae/` folder.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"
#include "dreamlora/vae/vae_blocks.h"

namespace dreamlora::vae {

// vae/config.json. Keys and defaults as AutoencoderKL.__init__ (shift_factor, use_quant_conv,
// use_post_quant_conv and mid_block_add_attention as later diffusers versions define them).
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;                            // null: no shift (SD1/2/XL)
  std::optional<std::vector<double>> latents_mean, latents_std;  // carried, not applied (as diffusers' model)
  bool force_upcast = true;  // fp16 weights overflow in this VAE: run it in float32
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  static AutoencoderKLConfig from_json(const io::Json& json, const std::string& source = "vae/config.json");
  static AutoencoderKLConfig from_file(const std::filesystem::path& path);
  io::Json to_json() const;
  // Pixels per latent along one side: 2^(len(block_out_channels) - 1) (8 for SD, 2 for the fixtures).
  int64_t scale_factor() const;
};

// The encoder's posterior: mean and log-variance (clamped to [-30, 20]) per latent element.
struct DiagonalGaussianDistribution {
  // moments: [B, 2 * latent_channels, h, w] (mean first, then logvar, along dim 1)
  explicit DiagonalGaussianDistribution(const torch::Tensor& moments);

  torch::Tensor mean, logvar, std, var;  // [B, latent_channels, h, w]

  // mean + std * eps with eps ~ N(0, 1) drawn from generator (the global one when none).
  torch::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
  // mean + std * eps for a given eps (tests, or noise drawn elsewhere).
  torch::Tensor sample_with(const torch::Tensor& eps) const;
  torch::Tensor mode() const { return mean; }
  // KL divergence to N(0, 1), summed over [1, 2, 3]: [B]
  torch::Tensor kl() const;
};

class AutoencoderKL;

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // Reads <vae_dir>/config.json and its safetensors weights (variant "" = plain files; strict key
  // match), cast to dtype. With force_upcast and dtype float16 the weights stay float32, as diffusers'
  // SD-XL scripts and pipelines run this VAE (fp16 overflows to NaN). Eval mode, no gradients.
  static AutoencoderKL load(const std::filesystem::path& vae_dir, const std::string& variant = "",
                            torch::ScalarType dtype = torch::kFloat32);

  // image [B, 3, H, W] in [-1, 1] -> posterior over [B, latent_channels, H/f, W/f]
  DiagonalGaussianDistribution encode(const torch::Tensor& image);
  // latents (unscaled) [B, latent_channels, h, w] -> image [B, 3, h*f, w*f]
  torch::Tensor decode(const torch::Tensor& latents);
  // decode(encode(image).mode()), or a posterior sample when sample_posterior.
  torch::Tensor forward(const torch::Tensor& image, bool sample_posterior = false,
                        c10::optional<at::Generator> generator = c10::nullopt);

  // UNet latents from VAE latents: (z - shift_factor) * scaling_factor, and back.
  torch::Tensor scale_latents(const torch::Tensor& z) const;
  torch::Tensor unscale_latents(const torch::Tensor& latents) const;

  // Slicing: encode/decode a batch one image at a time (lower peak memory, same result).
  void enable_slicing(bool on = true) { use_slicing_ = on; }
  // Tiling: inputs larger than sample_size pixels (or its latent size) are processed in overlapping
  // tiles blended linearly over 25 % of a tile, as diffusers' tiled_encode / tiled_decode.
  void enable_tiling(bool on = true) { use_tiling_ = on; }
  // Tile sizes, defaulting to sample_size and sample_size / f (as diffusers).
  void set_tile_sample_min_size(int64_t pixels);

  const AutoencoderKLConfig& config() const { return config_; }
  torch::ScalarType dtype() const;  // of the weights

  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr};       // null when use_quant_conv is false
  torch::nn::Conv2d post_quant_conv{nullptr};  // null when use_post_quant_conv is false

 private:
  torch::Tensor encode_moments(const torch::Tensor& image);  // [B, 2 * latent, h, w]
  torch::Tensor decode_untiled(const torch::Tensor& z);
  torch::Tensor tiled_encode(const torch::Tensor& image);
  torch::Tensor tiled_decode(const torch::Tensor& z);

  AutoencoderKLConfig config_;
  bool use_slicing_ = false;
  bool use_tiling_ = false;
  int64_t tile_sample_min_size_ = 0;
  int64_t tile_latent_min_size_ = 0;
  double tile_overlap_factor_ = 0.25;
};
TORCH_MODULE(AutoencoderKL);

}  // namespace dreamlora::vae
