// diffusers' `Attention` with the default processor (AttnProcessor / AttnProcessor2_0 math): self- or
// cross-attention on token input [B, L, C], or on feature maps [B, C, H, W] (the VAE mid-block form,
// with group_norm + residual_connection). Not implemented: added_kv_proj, spatial_norm, qk_norm,
// cross_attention_norm, attention masks.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>

#include "dreamlora/nn/linear.h"

namespace dreamlora::blocks {

// Mirrors Attention.__init__ keyword arguments (Python defaults).
//   UNet transformer block: {query_dim=C, cross_attention_dim=D or 0, heads, dim_head=C/heads, bias=false,
//                            upcast_attention}
//   VAE mid-block:          {query_dim=C, heads=1, dim_head=C, bias=true, upcast_softmax=true,
//                            norm_num_groups=32, eps=1e-6, residual_connection=true}
struct AttentionOptions {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0 = query_dim (self-attention; Python None)
  int64_t heads = 8;
  int64_t dim_head = 64;
  double dropout = 0.0;
  bool bias = false;  // bias of to_q/to_k/to_v
  bool upcast_attention = false;
  bool upcast_softmax = false;
  bool out_bias = true;         // bias of to_out.0
  int64_t norm_num_groups = 0;  // > 0 adds `group_norm` applied to the query input (Python None = 0)
  double eps = 1e-5;            // group_norm eps
  double rescale_output_factor = 1.0;
  bool residual_connection = false;
};

// Keys: to_q, to_k, to_v, to_out.0 (nn::LinearWithLora, LoRA-targetable), to_out.1 (dropout, no params),
// group_norm (optional).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // x: [B, L, query_dim] or [B, query_dim, H, W]; context: [B, Lk, cross_attention_dim] or undefined
  // (self-attention). Returns the shape of x.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});

  int64_t inner_dim() const { return options.heads * options.dim_head; }

  AttentionOptions options;
  torch::nn::GroupNorm group_norm{nullptr};
  nn::LinearWithLora to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};    // [0] nn::LinearWithLora(inner, query_dim), [1] Dropout
  nn::LinearWithLora to_out_proj{nullptr};  // the same module as to_out[0], typed
};
TORCH_MODULE(Attention);

}  // namespace dreamlora::blocks
