// diffusers' Transformer2DModel for continuous (latent) input as the SD UNets use it: GroupNorm,
// proj_in (1x1 conv, or Linear with use_linear_projection), BasicTransformerBlocks (layer_norm type:
// self-attention, cross-attention, GEGLU feed-forward), proj_out, residual.
// Not implemented: ada_norm variants, patched/vectorized input, gated attention, attention masks.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include "dreamlora/blocks/attention_processor.h"
#include "dreamlora/nn/linear.h"

namespace dreamlora::unet {

// diffusers GEGLU: proj (dim_in -> 2*dim_out), out = a * gelu(gate) with [a, gate] = chunk(proj(x), 2).
class GEGLUImpl : public torch::nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias = true);
  // [.., dim_in] -> [.., dim_out]
  torch::Tensor forward(const torch::Tensor& x);
  nn::LinearWithLora proj{nullptr};
};
TORCH_MODULE(GEGLU);

// FeedForward(activation_fn="geglu"): keys net.0.proj (GEGLU), net.1 (dropout, no params), net.2 (Linear).
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t mult = 4, double dropout = 0.0, bool bias = true);
  // [.., dim] -> [.., dim]
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList net{nullptr};
  GEGLU geglu{nullptr};                  // net[0]
  nn::LinearWithLora proj_out{nullptr};  // net[2]
  double dropout = 0.0;
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockOptions {
  int64_t dim = 0;
  int64_t num_attention_heads = 0;
  int64_t attention_head_dim = 0;
  int64_t cross_attention_dim = 0;  // 0 = none: no norm2/attn2 (Python None)
  double dropout = 0.0;
  bool attention_bias = false;
  bool only_cross_attention = false;  // attn1 attends to encoder_hidden_states too
  bool upcast_attention = false;
  double norm_eps = 1e-5;
};

// x = x + attn1(norm1(x)); x = x + attn2(norm2(x), context); x = x + ff(norm3(x)).
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const BasicTransformerBlockOptions& options);
  // x: [B, L, dim], context: [B, Lk, cross_attention_dim] -> [B, L, dim]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});

  BasicTransformerBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  blocks::Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// Mirrors Transformer2DModel.__init__ for continuous input.
struct Transformer2DModelOptions {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;
  int64_t num_layers = 1;
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
  int64_t cross_attention_dim = 0;  // 0 = none
  bool attention_bias = false;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DModelOptions& options);
  // x: [B, C, H, W], context: [B, Lk, D] -> [B, C, H, W]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});
  void set_gradient_checkpointing(bool enabled) { gradient_checkpointing = enabled; }

  Transformer2DModelOptions options;
  torch::nn::GroupNorm norm{nullptr};
  // Exactly one of each pair is set, by use_linear_projection; both register as proj_in / proj_out.
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  nn::LinearWithLora proj_in_linear{nullptr}, proj_out_linear{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};
  std::vector<BasicTransformerBlock> blocks;  // typed view of transformer_blocks
  bool gradient_checkpointing = false;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace dreamlora::unet
