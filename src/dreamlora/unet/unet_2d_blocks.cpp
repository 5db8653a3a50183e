// UNet down/mid/up blocks: see unet_2d_blocks.h. Registration order follows diffusers' __init__
// (attentions before resnets), so named_parameters order — and a seeded LoRA init — match.
#include "dreamlora/unet/unet_2d_blocks.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/unet/gradient_checkpointing.h"

namespace dreamlora::unet {

namespace {

blocks::ResnetBlock2D make_resnet(const UNetBlockOptions& o, int64_t in, int64_t out) {
  blocks::ResnetBlock2DOptions r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = o.temb_channels;
  r.groups = o.resnet_groups;
  r.eps = o.resnet_eps;
  r.dropout = o.dropout;
  r.output_scale_factor = o.output_scale_factor;
  r.skip_time_act = o.resnet_skip_time_act;
  return blocks::ResnetBlock2D(r);
}

Transformer2DModel make_transformer(const UNetBlockOptions& o, int64_t channels, size_t layer) {
  DL_CHECK(o.num_attention_heads > 0 && channels % o.num_attention_heads == 0,
           "cross-attention block: ", channels, " channels are not divisible by ", o.num_attention_heads,
           " attention heads");
  Transformer2DModelOptions t;
  t.num_attention_heads = o.num_attention_heads;
  t.attention_head_dim = channels / o.num_attention_heads;
  t.in_channels = channels;
  t.num_layers = layer < o.transformer_layers_per_block.size() ? o.transformer_layers_per_block[layer] : 1;
  t.norm_num_groups = o.resnet_groups;
  t.cross_attention_dim = o.cross_attention_dim;
  t.use_linear_projection = o.use_linear_projection;
  t.only_cross_attention = o.only_cross_attention;
  t.upcast_attention = o.upcast_attention;
  return Transformer2DModel(t);
}

void add_attentions(torch::nn::Module& block, BlockLayers& l, const UNetBlockOptions& o, int64_t channels,
                    int64_t count) {
  l.attentions_list = block.register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < count; ++i) {
    l.attentions.push_back(make_transformer(o, channels, static_cast<size_t>(i)));
    l.attentions_list->push_back(l.attentions.back());
  }
}

void add_resnets(torch::nn::Module& block, BlockLayers& l, std::vector<blocks::ResnetBlock2D> resnets) {
  l.resnets = std::move(resnets);
  l.resnets_list = block.register_module("resnets", torch::nn::ModuleList());
  for (auto& r : l.resnets) l.resnets_list->push_back(r);
}

void add_downsampler(torch::nn::Module& block, BlockLayers& l, const UNetBlockOptions& o) {
  if (!o.add_downsample) return;
  blocks::Downsample2DOptions d;
  d.channels = o.out_channels;
  d.use_conv = true;
  d.out_channels = o.out_channels;
  d.padding = o.downsample_padding;
  l.downsampler = blocks::Downsample2D(d);
  l.samplers_list = block.register_module("downsamplers", torch::nn::ModuleList(l.downsampler));
}

void add_upsampler(torch::nn::Module& block, BlockLayers& l, const UNetBlockOptions& o) {
  if (!o.add_upsample) return;
  blocks::Upsample2DOptions u;
  u.channels = o.out_channels;
  u.use_conv = true;
  u.out_channels = o.out_channels;
  l.upsampler = blocks::Upsample2D(u);
  l.samplers_list = block.register_module("upsamplers", torch::nn::ModuleList(l.upsampler));
}

// Up-block resnets: input = previous h (prev_output_channel first, then out) + a skip tensor
// (in_channels for the last layer, out_channels otherwise).
std::vector<blocks::ResnetBlock2D> up_resnets(const UNetBlockOptions& o) {
  std::vector<blocks::ResnetBlock2D> out;
  for (int64_t i = 0; i < o.num_layers; ++i) {
    const int64_t skip = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
    const int64_t in = i == 0 ? o.prev_output_channel : o.out_channels;
    out.push_back(make_resnet(o, in + skip, o.out_channels));
  }
  return out;
}

std::vector<blocks::ResnetBlock2D> down_resnets(const UNetBlockOptions& o) {
  std::vector<blocks::ResnetBlock2D> out;
  for (int64_t i = 0; i < o.num_layers; ++i)
    out.push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
  return out;
}

}  // namespace

torch::Tensor BlockLayers::run_resnet(size_t i, const torch::Tensor& h, const torch::Tensor& temb,
                                      bool training) const {
  auto resnet = resnets[i].ptr();
  if (gradient_checkpointing && training) {
    return checkpoint(
        *resnet, [resnet](const std::vector<torch::Tensor>& in) { return resnet->forward(in[0], in[1]); },
        {h, temb});
  }
  return resnet->forward(h, temb);
}

void BlockLayers::set_gradient_checkpointing(bool enabled) {
  gradient_checkpointing = enabled;
  for (auto& a : attentions) a->set_gradient_checkpointing(enabled);
}

CrossAttnDownBlock2DImpl::CrossAttnDownBlock2DImpl(const UNetBlockOptions& o) {
  add_attentions(*this, layers, o, o.out_channels, o.num_layers);
  add_resnets(*this, layers, down_resnets(o));
  add_downsampler(*this, layers, o);
}

std::pair<torch::Tensor, std::vector<torch::Tensor>> CrossAttnDownBlock2DImpl::forward(
    const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& context) {
  // x: [B, C_in, H, W] -> [B, C_out, H/2, W/2] (or H, W for the last block)
  std::vector<torch::Tensor> skips;
  auto h = x;
  for (size_t i = 0; i < layers.resnets.size(); ++i) {
    h = layers.run_resnet(i, h, temb, is_training());
    h = layers.attentions[i](h, context);
    skips.push_back(h);
  }
  if (layers.downsampler) {
    h = layers.downsampler(h);
    skips.push_back(h);
  }
  return {h, skips};
}

DownBlock2DImpl::DownBlock2DImpl(const UNetBlockOptions& o) {
  add_resnets(*this, layers, down_resnets(o));
  add_downsampler(*this, layers, o);
}

std::pair<torch::Tensor, std::vector<torch::Tensor>> DownBlock2DImpl::forward(
    const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& /*context*/) {
  std::vector<torch::Tensor> skips;
  auto h = x;
  for (size_t i = 0; i < layers.resnets.size(); ++i) {
    h = layers.run_resnet(i, h, temb, is_training());
    skips.push_back(h);
  }
  if (layers.downsampler) {
    h = layers.downsampler(h);
    skips.push_back(h);
  }
  return {h, skips};
}

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& o) {
  const int64_t c = o.in_channels;
  add_attentions(*this, layers, o, c, o.num_layers);
  std::vector<blocks::ResnetBlock2D> resnets;
  for (int64_t i = 0; i <= o.num_layers; ++i) resnets.push_back(make_resnet(o, c, c));
  add_resnets(*this, layers, std::move(resnets));
}

torch::Tensor UNetMidBlock2DCrossAttnImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                                   const torch::Tensor& context) {
  // [B, C, H, W] -> [B, C, H, W]
  auto h = layers.run_resnet(0, x, temb, is_training());
  for (size_t i = 0; i < layers.attentions.size(); ++i) {
    h = layers.attentions[i](h, context);
    h = layers.run_resnet(i + 1, h, temb, is_training());
  }
  return h;
}

CrossAttnUpBlock2DImpl::CrossAttnUpBlock2DImpl(const UNetBlockOptions& o) {
  add_attentions(*this, layers, o, o.out_channels, o.num_layers);
  add_resnets(*this, layers, up_resnets(o));
  add_upsampler(*this, layers, o);
}

namespace {
void check_skips(const BlockLayers& l, const std::vector<torch::Tensor>& res_samples) {
  DL_CHECK(res_samples.size() == l.resnets.size(), "up block: expected ", l.resnets.size(),
           " skip tensors, got ", res_samples.size());
}
}  // namespace

torch::Tensor CrossAttnUpBlock2DImpl::forward(const torch::Tensor& x,
                                              const std::vector<torch::Tensor>& res_samples,
                                              const torch::Tensor& temb, const torch::Tensor& context,
                                              const std::vector<int64_t>& upsample_size) {
  // x: [B, prev, H, W] -> [B, out, 2H, 2W] (or H, W for the last block)
  check_skips(layers, res_samples);
  auto h = x;
  for (size_t i = 0; i < layers.resnets.size(); ++i) {
    const auto& skip = res_samples[res_samples.size() - 1 - i];
    h = torch::cat({h, skip}, 1);  // [B, C_h + C_skip, H, W]
    h = layers.run_resnet(i, h, temb, is_training());
    h = layers.attentions[i](h, context);
  }
  if (layers.upsampler) h = layers.upsampler(h, upsample_size);
  return h;
}

UpBlock2DImpl::UpBlock2DImpl(const UNetBlockOptions& o) {
  add_resnets(*this, layers, up_resnets(o));
  add_upsampler(*this, layers, o);
}

torch::Tensor UpBlock2DImpl::forward(const torch::Tensor& x, const std::vector<torch::Tensor>& res_samples,
                                     const torch::Tensor& temb, const torch::Tensor& /*context*/,
                                     const std::vector<int64_t>& upsample_size) {
  check_skips(layers, res_samples);
  auto h = x;
  for (size_t i = 0; i < layers.resnets.size(); ++i) {
    h = torch::cat({h, res_samples[res_samples.size() - 1 - i]}, 1);  // [B, C_h + C_skip, H, W]
    h = layers.run_resnet(i, h, temb, is_training());
  }
  if (layers.upsampler) h = layers.upsampler(h, upsample_size);
  return h;
}

}  // namespace dreamlora::unet
