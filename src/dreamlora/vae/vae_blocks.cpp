// VAE encoder/decoder blocks: see vae_blocks.h. Constructor arguments follow diffusers' Encoder and
// Decoder (resnet eps 1e-6, downsample padding 0, decoder blocks with layers_per_block + 1 resnets).
#include "dreamlora/vae/vae_blocks.h"

#include <torch/torch.h>

#include "dreamlora/blocks/attention_processor.h"
#include "dreamlora/blocks/resnet.h"
#include "dreamlora/common/error.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::vae {

namespace {

constexpr double kEps = 1e-6;

blocks::ResnetBlock2D make_resnet(int64_t in, int64_t out, int64_t groups) {
  blocks::ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.temb_channels = 0;  // the VAE has no time embedding
  o.groups = groups;
  o.eps = kEps;
  return blocks::ResnetBlock2D(o);
}

torch::Tensor run_resnets(torch::nn::ModuleList& resnets, torch::Tensor h) {
  for (size_t i = 0; i < resnets->size(); ++i) h = resnets[i]->as<blocks::ResnetBlock2DImpl>()->forward(h);
  return h;
}

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return nn::conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(1).padding(1));
}

torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(kEps));
}

}  // namespace

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(const VaeBlockOptions& o) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets->push_back(make_resnet(i == 0 ? o.in_channels : o.out_channels, o.out_channels, o.groups));
  }
  if (o.add_sample) {
    blocks::Downsample2DOptions d;
    d.channels = o.out_channels;
    d.use_conv = true;
    d.out_channels = o.out_channels;
    d.padding = 0;  // asymmetric right/bottom pad, as the LDM VAE was trained
    downsamplers = register_module("downsamplers", torch::nn::ModuleList(blocks::Downsample2D(d)));
  }
}

torch::Tensor DownEncoderBlock2DImpl::forward(const torch::Tensor& x) {
  // [B, in, H, W] -> [B, out, H, W] -> [B, out, H/2, W/2]
  auto h = run_resnets(resnets, x);
  if (downsamplers) h = downsamplers[0]->as<blocks::Downsample2DImpl>()->forward(h);
  return h;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(const VaeBlockOptions& o) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnets->push_back(make_resnet(i == 0 ? o.in_channels : o.out_channels, o.out_channels, o.groups));
  }
  if (o.add_sample) {
    blocks::Upsample2DOptions u;
    u.channels = o.out_channels;
    u.use_conv = true;
    u.out_channels = o.out_channels;
    upsamplers = register_module("upsamplers", torch::nn::ModuleList(blocks::Upsample2D(u)));
  }
}

torch::Tensor UpDecoderBlock2DImpl::forward(const torch::Tensor& x) {
  // [B, in, H, W] -> [B, out, H, W] -> [B, out, 2H, 2W]
  auto h = run_resnets(resnets, x);
  if (upsamplers) h = upsamplers[0]->as<blocks::Upsample2DImpl>()->forward(h);
  return h;
}

UNetMidBlock2DImpl::UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention) {
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets = register_module("resnets", torch::nn::ModuleList());
  resnets->push_back(make_resnet(channels, channels, groups));
  if (add_attention) {
    blocks::AttentionOptions a;
    a.query_dim = channels;
    a.heads = 1;  // channels / attention_head_dim with attention_head_dim = channels
    a.dim_head = channels;
    a.bias = true;
    a.upcast_softmax = true;
    a.norm_num_groups = groups;
    a.eps = kEps;
    a.residual_connection = true;
    a.rescale_output_factor = 1.0;
    attentions->push_back(blocks::Attention(a));
  }
  resnets->push_back(make_resnet(channels, channels, groups));
}

torch::Tensor UNetMidBlock2DImpl::forward(const torch::Tensor& x) {
  // [B, C, H, W]
  auto h = resnets[0]->as<blocks::ResnetBlock2DImpl>()->forward(x);
  if (!attentions->is_empty()) h = attentions[0]->as<blocks::AttentionImpl>()->forward(h);
  return resnets[1]->as<blocks::ResnetBlock2DImpl>()->forward(h);
}

EncoderImpl::EncoderImpl(const EncoderDecoderOptions& o) {
  const auto& ch = o.block_out_channels;
  DL_CHECK(!ch.empty(), "VAE Encoder: block_out_channels is empty");
  conv_in = register_module("conv_in", conv3x3(o.in_channels, ch[0]));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t out = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t in = out;
    out = ch[i];
    down_blocks->push_back(DownEncoderBlock2D(VaeBlockOptions{in, out, o.layers_per_block, o.norm_num_groups,
                                                              /*add_sample=*/i + 1 < ch.size()}));
  }
  mid_block =
      register_module("mid_block", UNetMidBlock2D(ch.back(), o.norm_num_groups, o.mid_block_add_attention));
  conv_norm_out = register_module("conv_norm_out", group_norm(o.norm_num_groups, ch.back()));
  conv_out =
      register_module("conv_out", conv3x3(ch.back(), o.double_z ? 2 * o.out_channels : o.out_channels));
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& x) {
  // x: [B, 3, H, W]
  auto h = conv_in(x);  // [B, ch0, H, W]
  for (size_t i = 0; i < down_blocks->size(); ++i)
    h = down_blocks[i]->as<DownEncoderBlock2DImpl>()->forward(h);
  h = mid_block(h);  // [B, ch_last, H / 2^(n-1), W / 2^(n-1)]
  h = torch::silu(conv_norm_out(h));
  return conv_out(h);  // [B, 2 * latent_channels, h, w]
}

DecoderImpl::DecoderImpl(const EncoderDecoderOptions& o) {
  const auto& ch = o.block_out_channels;
  DL_CHECK(!ch.empty(), "VAE Decoder: block_out_channels is empty");
  conv_in = register_module("conv_in", conv3x3(o.in_channels, ch.back()));
  mid_block =
      register_module("mid_block", UNetMidBlock2D(ch.back(), o.norm_num_groups, o.mid_block_add_attention));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  const std::vector<int64_t> reversed(ch.rbegin(), ch.rend());
  int64_t out = reversed[0];
  for (size_t i = 0; i < reversed.size(); ++i) {
    const int64_t prev = out;
    out = reversed[i];
    up_blocks->push_back(
        UpDecoderBlock2D(VaeBlockOptions{prev, out, o.layers_per_block + 1, o.norm_num_groups,
                                         /*add_sample=*/i + 1 < reversed.size()}));
  }
  conv_norm_out = register_module("conv_norm_out", group_norm(o.norm_num_groups, ch[0]));
  conv_out = register_module("conv_out", conv3x3(ch[0], o.out_channels));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& z) {
  // z: [B, latent_channels, h, w]
  auto h = conv_in(z);  // [B, ch_last, h, w]
  h = mid_block(h);
  // diffusers casts to the up blocks' dtype here (they may be kept in a different precision).
  h = h.to(up_blocks->parameters().front().scalar_type());
  for (size_t i = 0; i < up_blocks->size(); ++i) h = up_blocks[i]->as<UpDecoderBlock2DImpl>()->forward(h);
  h = torch::silu(conv_norm_out(h));  // [B, ch0, H, W]
  return conv_out(h);                 // [B, 3, H, W]
}

}  // namespace dreamlora::vae
