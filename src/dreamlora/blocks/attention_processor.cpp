// diffusers Attention (default processor): see attention_processor.h.
#include "dreamlora/blocks/attention_processor.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/attention.h"
#include "dreamlora/nn/norms.h"

namespace dreamlora::blocks {

AttentionImpl::AttentionImpl(const AttentionOptions& opts) : options(opts) {
  DL_CHECK(options.query_dim > 0 && options.heads > 0 && options.dim_head > 0,
           "Attention: query_dim, heads and dim_head must be positive, got ", options.query_dim, ", ",
           options.heads, ", ", options.dim_head);
  if (options.cross_attention_dim == 0) options.cross_attention_dim = options.query_dim;
  const int64_t inner = inner_dim();
  if (options.norm_num_groups > 0) {
    group_norm = register_module(
        "group_norm",
        torch::nn::GroupNorm(
            torch::nn::GroupNormOptions(options.norm_num_groups, options.query_dim).eps(options.eps)));
  }
  to_q = register_module("to_q", nn::LinearWithLora(options.query_dim, inner, options.bias));
  to_k = register_module("to_k", nn::LinearWithLora(options.cross_attention_dim, inner, options.bias));
  to_v = register_module("to_v", nn::LinearWithLora(options.cross_attention_dim, inner, options.bias));
  to_out_proj = nn::LinearWithLora(inner, options.query_dim, options.out_bias);
  to_out = register_module("to_out", torch::nn::ModuleList(to_out_proj, torch::nn::Dropout(options.dropout)));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  const bool spatial = x.dim() == 4;
  DL_CHECK(spatial || x.dim() == 3, "Attention: input must be [B, L, C] or [B, C, H, W], got ", x.sizes());
  int64_t channels = 0, height = 0, width = 0;
  auto h = x;
  if (spatial) {
    channels = x.size(1), height = x.size(2), width = x.size(3);
    h = x.reshape({x.size(0), channels, height * width}).transpose(1, 2);  // [B, HW, C]
  }
  if (group_norm)
    h = nn::group_norm_fp32(group_norm, h.transpose(1, 2))
            .transpose(1, 2);  // normalises channels: [B, C, L] view

  const auto& kv_input = context.defined() ? context : h;
  auto q = nn::split_heads(to_q(h), options.heads);         // [B, heads, L, dim_head]
  auto k = nn::split_heads(to_k(kv_input), options.heads);  // [B, heads, Lk, dim_head]
  auto v = nn::split_heads(to_v(kv_input), options.heads);
  const bool upcast = options.upcast_attention || options.upcast_softmax;
  auto o = nn::merge_heads(nn::attention(q, k, v, /*causal=*/false, upcast));  // [B, L, inner]
  o = to_out_proj(o);                                                          // [B, L, query_dim]
  if (options.dropout > 0.0 && is_training()) o = torch::dropout(o, options.dropout, true);

  if (spatial) o = o.transpose(1, 2).reshape({x.size(0), channels, height, width});  // [B, C, H, W]
  if (options.residual_connection) o = o + x;
  if (options.rescale_output_factor != 1.0) o = o / options.rescale_output_factor;
  return o;
}

}  // namespace dreamlora::blocks
