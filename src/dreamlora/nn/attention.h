// Scaled dot-product attention shared by the UNet and the text encoders.
// libtorch >= 2.0: at::scaled_dot_product_attention. libtorch 1.13: softmax(QK^T*scale)V computed in
// slices over batch*heads so the [L, L] score matrix never exists for all heads at once.
#pragma once

#include <torch/types.h>

namespace dreamlora::nn {

// q: [B, heads, Lq, D], k, v: [B, heads, Lk, D] -> [B, heads, Lq, D]. causal masks j > i.
// upcast computes scores and softmax in fp32 (diffusers' upcast_attention / upcast_softmax).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        bool causal = false, bool upcast = false);

// [B, L, heads*D] -> [B, heads, L, D]
torch::Tensor split_heads(const torch::Tensor& x, int64_t heads);
// [B, heads, L, D] -> [B, L, heads*D]
torch::Tensor merge_heads(const torch::Tensor& x);

}  // namespace dreamlora::nn
