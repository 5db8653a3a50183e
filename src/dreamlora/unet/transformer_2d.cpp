// Transformer2DModel, BasicTransformerBlock, FeedForward/GEGLU: see transformer_2d.h.
#include "dreamlora/unet/transformer_2d.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/frozen_conv.h"
#include "dreamlora/nn/norms.h"
#include "dreamlora/nn/uninitialized.h"
#include "dreamlora/unet/gradient_checkpointing.h"

namespace dreamlora::unet {

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias) {
  proj = register_module("proj", nn::LinearWithLora(dim_in, dim_out * 2, bias));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& x) {
  auto parts = proj(x).chunk(2, -1);  // 2 x [.., dim_out]
  return parts[0] * torch::gelu(parts[1]);
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult, double drop, bool bias) : dropout(drop) {
  const int64_t inner = dim * mult;
  geglu = GEGLU(dim, inner, bias);
  proj_out = nn::LinearWithLora(inner, dim, bias);
  net = register_module("net", torch::nn::ModuleList(geglu, torch::nn::Dropout(drop), proj_out));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  auto h = geglu(x);  // [.., 4*dim]
  if (dropout > 0.0 && is_training()) h = torch::dropout(h, dropout, true);
  return proj_out(h);  // [.., dim]
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const BasicTransformerBlockOptions& opts)
    : options(opts) {
  const int64_t dim = options.dim;
  auto layer_norm = [&] {
    return torch::nn::LayerNorm(
        torch::nn::LayerNormOptions({dim}).eps(options.norm_eps).elementwise_affine(true));
  };
  blocks::AttentionOptions a1;
  a1.query_dim = dim;
  a1.heads = options.num_attention_heads;
  a1.dim_head = options.attention_head_dim;
  a1.dropout = options.dropout;
  a1.bias = options.attention_bias;
  a1.upcast_attention = options.upcast_attention;
  a1.cross_attention_dim = options.only_cross_attention ? options.cross_attention_dim : 0;
  norm1 = register_module("norm1", layer_norm());
  attn1 = register_module("attn1", blocks::Attention(a1));
  if (options.cross_attention_dim > 0) {
    blocks::AttentionOptions a2 = a1;
    a2.cross_attention_dim = options.cross_attention_dim;
    norm2 = register_module("norm2", layer_norm());
    attn2 = register_module("attn2", blocks::Attention(a2));
  }
  norm3 = register_module("norm3", layer_norm());
  ff = register_module("ff", FeedForward(dim, 4, options.dropout, true));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  // x: [B, L, dim]
  auto h = x + attn1(nn::layer_norm_fp32(norm1, x), options.only_cross_attention ? context : torch::Tensor());
  if (attn2) h = h + attn2(nn::layer_norm_fp32(norm2, h), context);
  return h + ff(nn::layer_norm_fp32(norm3, h));
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DModelOptions& opts) : options(opts) {
  const int64_t in = options.in_channels;
  const int64_t inner = options.num_attention_heads * options.attention_head_dim;
  DL_CHECK(in > 0 && inner > 0, "Transformer2DModel: in_channels and heads*head_dim must be positive, got ",
           in, ", ", inner);
  norm = register_module(
      "norm",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(options.norm_num_groups, in).eps(1e-6).affine(true)));
  if (options.use_linear_projection) {
    proj_in_linear = register_module("proj_in", nn::LinearWithLora(in, inner));
  } else {
    proj_in_conv = register_module("proj_in", nn::conv2d(torch::nn::Conv2dOptions(in, inner, 1)));
  }
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers; ++i) {
    BasicTransformerBlockOptions b;
    b.dim = inner;
    b.num_attention_heads = options.num_attention_heads;
    b.attention_head_dim = options.attention_head_dim;
    b.cross_attention_dim = options.cross_attention_dim;
    b.dropout = options.dropout;
    b.attention_bias = options.attention_bias;
    b.only_cross_attention = options.only_cross_attention;
    b.upcast_attention = options.upcast_attention;
    blocks.emplace_back(b);
    transformer_blocks->push_back(blocks.back());
  }
  if (options.use_linear_projection) {
    proj_out_linear = register_module("proj_out", nn::LinearWithLora(inner, in));
  } else {
    proj_out_conv = register_module("proj_out", nn::conv2d(torch::nn::Conv2dOptions(inner, in, 1)));
  }
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  // x: [B, C, H, W]
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  auto h = nn::group_norm_fp32(norm, x);
  int64_t inner = 0;
  if (proj_in_conv) {
    h = nn::conv2d_forward(proj_in_conv, h);  // [B, inner, H, W]
    inner = h.size(1);
    h = h.permute({0, 2, 3, 1}).reshape({batch, height * width, inner});  // [B, HW, inner]
  } else {
    h = h.permute({0, 2, 3, 1}).reshape({batch, height * width, h.size(1)});  // [B, HW, C]
    h = proj_in_linear(h);                                                    // [B, HW, inner]
    inner = h.size(2);
  }
  for (auto& block : blocks) {
    if (gradient_checkpointing && is_training()) {
      auto impl = block.ptr();
      h = checkpoint(*impl,
                     [impl](const std::vector<torch::Tensor>& in) { return impl->forward(in[0], in[1]); },
                     {h, context});
    } else {
      h = block->forward(h, context);
    }
  }
  if (proj_out_conv) {
    h = h.reshape({batch, height, width, inner}).permute({0, 3, 1, 2}).contiguous();  // [B, inner, H, W]
    h = nn::conv2d_forward(proj_out_conv, h);                                         // [B, C, H, W]
  } else {
    h = proj_out_linear(h);                                                               // [B, HW, C]
    h = h.reshape({batch, height, width, h.size(2)}).permute({0, 3, 1, 2}).contiguous();  // [B, C, H, W]
  }
  return h + x;
}

}  // namespace dreamlora::unet
