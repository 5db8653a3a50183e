// Memory-efficient (flash-attention style) scaled dot-product attention for CPU fp32: keeps only the
// output and the per-row logsumexp for backward and recomputes probabilities block by block.
#pragma once

#include <torch/types.h>

namespace dreamlora::nn {

// q: [B, heads, Lq, D], k: [B, heads, Lk, D], v: [B, heads, Lk, Dv] (fp32, CPU) -> [B, heads, Lq, Dv].
// causal masks key j > query i. Differentiable in q, k and v; never materialises [Lq, Lk] per head.
torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              bool causal = false);

// Whether fused_attention handles these inputs (CPU, fp32, 4-d, matching batch/heads/lengths).
bool fused_attention_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

}  // namespace dreamlora::nn
