// ResnetBlock2D, Downsample2D, Upsample2D: see resnet.h.
#include "dreamlora/blocks/resnet.h"

#include <torch/nn/functional/padding.h>
#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/frozen_conv.h"
#include "dreamlora/nn/norms.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::blocks {

namespace {
torch::nn::Conv2d make_conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
                            bool bias = true) {
  return nn::conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(bias));
}
torch::nn::GroupNorm make_group_norm(int64_t groups, int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps).affine(true));
}
}  // namespace

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& opts) : options(opts) {
  DL_CHECK(options.in_channels > 0, "ResnetBlock2D: in_channels must be positive, got ", options.in_channels);
  if (options.out_channels == 0) options.out_channels = options.in_channels;
  if (options.groups_out == 0) options.groups_out = options.groups;
  const int64_t in = options.in_channels, out = options.out_channels;
  DL_CHECK(in % options.groups == 0, "ResnetBlock2D: in_channels ", in, " not divisible by groups ",
           options.groups);
  DL_CHECK(out % options.groups_out == 0, "ResnetBlock2D: out_channels ", out, " not divisible by groups ",
           options.groups_out);

  norm1 = register_module("norm1", make_group_norm(options.groups, in, options.eps));
  conv1 = register_module("conv1", make_conv(in, out, 3, 1, 1));
  if (options.temb_channels > 0) {
    time_emb_proj = register_module("time_emb_proj", nn::LinearWithLora(options.temb_channels, out));
  }
  norm2 = register_module("norm2", make_group_norm(options.groups_out, out, options.eps));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout));
  conv2 = register_module("conv2", make_conv(out, out, 3, 1, 1));
  const bool shortcut = options.use_in_shortcut.value_or(in != out);
  if (shortcut) {
    conv_shortcut = register_module("conv_shortcut", make_conv(in, out, 1, 1, 0, options.conv_shortcut_bias));
  }
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  // x: [B, in, H, W], temb: [B, temb_channels]
  auto h = torch::silu(nn::group_norm_fp32(norm1, x));
  h = nn::conv2d_forward(conv1, h);  // [B, out, H, W]
  if (time_emb_proj && temb.defined()) {
    auto t = options.skip_time_act ? temb : torch::silu(temb);
    t = time_emb_proj(t);                   // [B, out]
    h = h + t.unsqueeze(-1).unsqueeze(-1);  // broadcast over [H, W]
  }
  h = torch::silu(nn::group_norm_fp32(norm2, h));
  if (options.dropout > 0.0) h = dropout(h);
  h = nn::conv2d_forward(conv2, h);
  auto residual = conv_shortcut ? nn::conv2d_forward(conv_shortcut, x) : x;
  auto out = residual + h;
  if (options.output_scale_factor != 1.0) out = out / options.output_scale_factor;
  return out;  // [B, out, H, W]
}

Downsample2DImpl::Downsample2DImpl(const Downsample2DOptions& opts) : options(opts) {
  if (options.out_channels == 0) options.out_channels = options.channels;
  if (options.use_conv) {
    conv = register_module("conv", nn::conv2d(torch::nn::Conv2dOptions(options.channels, options.out_channels,
                                                                       options.kernel_size)
                                                  .stride(2)
                                                  .padding(options.padding)
                                                  .bias(options.bias)));
  } else {
    DL_CHECK(options.channels == options.out_channels,
             "Downsample2D: avg-pool needs channels == out_channels, got ", options.channels, " vs ",
             options.out_channels);
  }
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  // [B, C, H, W] -> [B, out, H/2, W/2]
  DL_CHECK(x.size(1) == options.channels, "Downsample2D: expected ", options.channels, " channels, got ",
           x.size(1));
  if (!options.use_conv) return torch::avg_pool2d(x, {2, 2}, {2, 2});
  if (options.padding == 0) {
    // diffusers pads only right and bottom so the stride-2 conv sees the LDM layout.
    return nn::conv2d_forward(conv, torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  }
  return nn::conv2d_forward(conv, x);
}

Upsample2DImpl::Upsample2DImpl(const Upsample2DOptions& opts) : options(opts) {
  if (options.out_channels == 0) options.out_channels = options.channels;
  if (options.use_conv) {
    conv = register_module("conv", nn::conv2d(torch::nn::Conv2dOptions(options.channels, options.out_channels,
                                                                       options.kernel_size)
                                                  .padding(options.padding)
                                                  .bias(options.bias)));
  }
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, const std::vector<int64_t>& output_size) {
  // [B, C, H, W] -> [B, C, 2H, 2W]
  DL_CHECK(x.size(1) == options.channels, "Upsample2D: expected ", options.channels, " channels, got ",
           x.size(1));
  const auto dtype = x.scalar_type();
  // upsample_nearest2d has no bf16 kernel before PyTorch 2.1 (diffusers does the same round trip).
  auto h = dtype == torch::kBFloat16 ? x.to(torch::kFloat32) : x;
  if (output_size.empty() && h.is_cuda() && at::globalContext().deterministicAlgorithms()) {
    // The same copy as a broadcast: its backward is a sum, where upsample_nearest2d's CUDA backward is
    // nondeterministic (atomic adds).  [B, C, H, W] -> [B, C, H, 2, W, 2] -> [B, C, 2H, 2W]
    const auto b = h.size(0), c = h.size(1), hh = h.size(2), w = h.size(3);
    h = h.reshape({b, c, hh, 1, w, 1}).expand({b, c, hh, 2, w, 2}).reshape({b, c, 2 * hh, 2 * w});
  } else if (output_size.empty()) {
    const std::vector<int64_t> size{2 * x.size(2), 2 * x.size(3)};
    h = torch::upsample_nearest2d(h, at::IntArrayRef(size), c10::nullopt, c10::nullopt);
  } else {
    DL_CHECK(output_size.size() == 2, "Upsample2D: output_size needs 2 entries, got ", output_size.size());
    h = torch::upsample_nearest2d(h, at::IntArrayRef(output_size), c10::nullopt, c10::nullopt);
  }
  if (dtype == torch::kBFloat16) h = h.to(dtype);
  return conv ? nn::conv2d_forward(conv, h) : h;
}

}  // namespace dreamlora::blocks
