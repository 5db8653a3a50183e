// diffusers' UNet blocks used by the SD1/SD2/SDXL UNets: CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D (resnet_time_scale_shift "default", no
// dual cross-attention, no FreeU). Keys: resnets.N, attentions.N, downsamplers.0.conv, upsamplers.0.conv.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <memory>
#include <utility>
#include <vector>

#include "dreamlora/blocks/resnet.h"
#include "dreamlora/unet/transformer_2d.h"

namespace dreamlora::unet {

// The get_down_block / get_up_block / get_mid_block arguments these blocks use.
struct UNetBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channel = 0;  // up blocks: channels coming from the block below
  int64_t temb_channels = 0;
  int64_t num_layers = 1;
  std::vector<int64_t> transformer_layers_per_block;  // one per layer; empty = 1 each
  double resnet_eps = 1e-6;
  int64_t resnet_groups = 32;
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  bool resnet_skip_time_act = false;
  bool add_downsample = true;
  bool add_upsample = true;
  int64_t downsample_padding = 1;
  // Cross-attention blocks only.
  int64_t num_attention_heads = 1;
  int64_t cross_attention_dim = 1280;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

// Common interface so the UNet can hold either kind of block in one list.
class UNetDownBlock : public torch::nn::Module {
 public:
  // h: [B, C_in, H, W], temb: [B, T], context: [B, L, D] (ignored without attention)
  // -> (h_out, skip outputs in order: one per layer, plus the downsampled map when add_downsample)
  virtual std::pair<torch::Tensor, std::vector<torch::Tensor>> forward(const torch::Tensor& h,
                                                                       const torch::Tensor& temb,
                                                                       const torch::Tensor& context) = 0;
  virtual void set_gradient_checkpointing(bool enabled) = 0;
  virtual int64_t num_resnets() const = 0;
};

class UNetUpBlock : public torch::nn::Module {
 public:
  // res_samples: the skip tensors of this block, oldest first (consumed from the back, as diffusers).
  // upsample_size: {H, W} to upsample to, or empty for 2x.
  virtual torch::Tensor forward(const torch::Tensor& h, const std::vector<torch::Tensor>& res_samples,
                                const torch::Tensor& temb, const torch::Tensor& context,
                                const std::vector<int64_t>& upsample_size) = 0;
  virtual void set_gradient_checkpointing(bool enabled) = 0;
  virtual int64_t num_resnets() const = 0;
};

// Shared layer lists of the blocks below; each block registers only the lists it has.
struct BlockLayers {
  torch::nn::ModuleList resnets_list{nullptr}, attentions_list{nullptr}, samplers_list{nullptr};
  std::vector<blocks::ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;
  blocks::Downsample2D downsampler{nullptr};
  blocks::Upsample2D upsampler{nullptr};
  bool gradient_checkpointing = false;

  // ResnetBlock2D (checkpointed when enabled and training).
  torch::Tensor run_resnet(size_t i, const torch::Tensor& h, const torch::Tensor& temb, bool training) const;
  void set_gradient_checkpointing(bool enabled);
};

class CrossAttnDownBlock2DImpl : public UNetDownBlock {
 public:
  explicit CrossAttnDownBlock2DImpl(const UNetBlockOptions& options);
  std::pair<torch::Tensor, std::vector<torch::Tensor>> forward(const torch::Tensor& h,
                                                               const torch::Tensor& temb,
                                                               const torch::Tensor& context) override;
  void set_gradient_checkpointing(bool enabled) override { layers.set_gradient_checkpointing(enabled); }
  int64_t num_resnets() const override { return static_cast<int64_t>(layers.resnets.size()); }
  BlockLayers layers;
};
TORCH_MODULE(CrossAttnDownBlock2D);

class DownBlock2DImpl : public UNetDownBlock {
 public:
  explicit DownBlock2DImpl(const UNetBlockOptions& options);
  std::pair<torch::Tensor, std::vector<torch::Tensor>> forward(const torch::Tensor& h,
                                                               const torch::Tensor& temb,
                                                               const torch::Tensor& context) override;
  void set_gradient_checkpointing(bool enabled) override { layers.set_gradient_checkpointing(enabled); }
  int64_t num_resnets() const override { return static_cast<int64_t>(layers.resnets.size()); }
  BlockLayers layers;
};
TORCH_MODULE(DownBlock2D);

// resnets.0, then (attentions.i, resnets.i+1) for each of num_layers; channels stay in_channels.
class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& options);
  // h: [B, C, H, W] -> [B, C, H, W]
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& temb, const torch::Tensor& context);
  void set_gradient_checkpointing(bool enabled) { layers.set_gradient_checkpointing(enabled); }
  BlockLayers layers;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

class CrossAttnUpBlock2DImpl : public UNetUpBlock {
 public:
  explicit CrossAttnUpBlock2DImpl(const UNetBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& h, const std::vector<torch::Tensor>& res_samples,
                        const torch::Tensor& temb, const torch::Tensor& context,
                        const std::vector<int64_t>& upsample_size) override;
  void set_gradient_checkpointing(bool enabled) override { layers.set_gradient_checkpointing(enabled); }
  int64_t num_resnets() const override { return static_cast<int64_t>(layers.resnets.size()); }
  BlockLayers layers;
};
TORCH_MODULE(CrossAttnUpBlock2D);

class UpBlock2DImpl : public UNetUpBlock {
 public:
  explicit UpBlock2DImpl(const UNetBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& h, const std::vector<torch::Tensor>& res_samples,
                        const torch::Tensor& temb, const torch::Tensor& context,
                        const std::vector<int64_t>& upsample_size) override;
  void set_gradient_checkpointing(bool enabled) override { layers.set_gradient_checkpointing(enabled); }
  int64_t num_resnets() const override { return static_cast<int64_t>(layers.resnets.size()); }
  BlockLayers layers;
};
TORCH_MODULE(UpBlock2D);

}  // namespace dreamlora::unet
