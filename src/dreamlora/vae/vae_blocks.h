// The VAE's own blocks, as diffusers' models/autoencoders/vae.py and unet_2d_blocks.py build them for
// AutoencoderKL: DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D (resnets + one group-norm
// attention), Encoder and Decoder. ResnetBlock2D / Downsample2D / Upsample2D / Attention are the UNet's
// shared layers. Not implemented: spatial norm (MoVQ), gradient checkpointing.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include <vector>

namespace dreamlora::vae {

// Resnet eps and groups are fixed by diffusers' Encoder/Decoder (1e-6, norm_num_groups).
struct VaeBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t num_layers = 1;
  int64_t groups = 32;
  bool add_sample = true;  // downsampler (encoder) / upsampler (decoder) after the resnets
};

// Keys: resnets.<i>, downsamplers.0.conv. [B, in, H, W] -> [B, out, H/2, W/2] (or H, W when last)
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit DownEncoderBlock2DImpl(const VaeBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList downsamplers{nullptr};  // null on the last block
};
TORCH_MODULE(DownEncoderBlock2D);

// Keys: resnets.<i>, upsamplers.0.conv. [B, in, H, W] -> [B, out, 2H, 2W] (or H, W when last)
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit UpDecoderBlock2DImpl(const VaeBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList upsamplers{nullptr};  // null on the last block
};
TORCH_MODULE(UpDecoderBlock2D);

// Keys: resnets.0, attentions.0 (group_norm, to_q, to_k, to_v, to_out.0), resnets.1.
// The attention has channels / attention_head_dim heads; Encoder/Decoder pass attention_head_dim =
// channels, i.e. one head over all channels.
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention);
  // [B, C, H, W] -> [B, C, H, W]
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList attentions{nullptr};  // empty when add_attention is false
  torch::nn::ModuleList resnets{nullptr};
};
TORCH_MODULE(UNetMidBlock2D);

struct EncoderDecoderOptions {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  bool double_z = true;  // encoder only: conv_out emits mean and logvar
  bool mid_block_add_attention = true;
};

// image [B, in, H, W] -> moments [B, 2 * out (double_z), H / 2^(n-1), W / 2^(n-1)]
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const EncoderDecoderOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv_in{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Encoder);

// latent [B, in, h, w] -> image [B, out, h * 2^(n-1), w * 2^(n-1)]
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const EncoderDecoderOptions& options);
  torch::Tensor forward(const torch::Tensor& z);

  torch::nn::Conv2d conv_in{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Decoder);

}  // namespace dreamlora::vae
