// diffusers' ResnetBlock2D (time_embedding_norm "default", no up/down inside the block), Downsample2D
// (strided conv or avg-pool) and Upsample2D (nearest 2x + conv). Shared by the UNet and the VAE.
// Not implemented: scale_shift / ada_group norms, FIR kernels, conv-transpose upsampling.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/normalization.h>

#include <optional>
#include <vector>

#include "dreamlora/nn/linear.h"

namespace dreamlora::blocks {

// Mirrors ResnetBlock2D.__init__ keyword arguments (Python defaults).
struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;     // 0 = in_channels (Python None)
  int64_t temb_channels = 512;  // 0 = no time_emb_proj (Python None, as in the VAE)
  int64_t groups = 32;
  int64_t groups_out = 0;  // 0 = groups
  double eps = 1e-6;
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  bool skip_time_act = false;
  std::optional<bool> use_in_shortcut;  // default: in_channels != out_channels
  bool conv_shortcut_bias = true;
};

// x -> norm1 -> silu -> conv1 (+ time_emb_proj(silu(temb))) -> norm2 -> silu -> dropout -> conv2,
// plus the (optionally 1x1-projected) input, divided by output_scale_factor.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x: [B, in, H, W], temb: [B, temb_channels] or undefined -> [B, out, H, W]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

  ResnetBlock2DOptions options;
  torch::nn::GroupNorm norm1{nullptr};
  torch::nn::Conv2d conv1{nullptr};
  nn::LinearWithLora time_emb_proj{nullptr};  // null when temb_channels == 0
  torch::nn::GroupNorm norm2{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Conv2d conv2{nullptr};
  torch::nn::Conv2d conv_shortcut{nullptr};  // null unless the shortcut needs a projection
};
TORCH_MODULE(ResnetBlock2D);

// Mirrors Downsample2D.__init__ (name "conv" only; no norm_type).
struct Downsample2DOptions {
  int64_t channels = 0;
  bool use_conv = false;
  int64_t out_channels = 0;  // 0 = channels
  // padding 0 (the VAE encoder) pads right/bottom by one before the stride-2 conv, as diffusers does.
  int64_t padding = 1;
  int64_t kernel_size = 3;
  bool bias = true;
};

// [B, C, H, W] -> [B, out, H/2, W/2]. With use_conv the parameters are conv.weight / conv.bias;
// without, a parameterless 2x2 average pool.
class Downsample2DImpl : public torch::nn::Module {
 public:
  explicit Downsample2DImpl(const Downsample2DOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  Downsample2DOptions options;
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Mirrors Upsample2D.__init__ (name "conv", interpolate true; no conv-transpose, no norm_type).
struct Upsample2DOptions {
  int64_t channels = 0;
  bool use_conv = false;
  int64_t out_channels = 0;  // 0 = channels
  int64_t kernel_size = 3;
  int64_t padding = 1;
  bool bias = true;
};

// Nearest-neighbour 2x (or to output_size) then, with use_conv, a 3x3 conv named `conv`.
class Upsample2DImpl : public torch::nn::Module {
 public:
  explicit Upsample2DImpl(const Upsample2DOptions& options);
  // [B, C, H, W] -> [B, out, 2H, 2W] (or output_size = {H', W'} when given, as the UNet does for
  // latents whose size is not a multiple of 2^num_upsamplers)
  torch::Tensor forward(const torch::Tensor& x, const std::vector<int64_t>& output_size = {});

  Upsample2DOptions options;
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace dreamlora::blocks
