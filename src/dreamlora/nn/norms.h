// Group and layer norm as torch.autocast runs them under mixed precision: statistics and affine in fp32
// whatever the dtype of the input and weights, the result cast back to the input's dtype (fp16/bf16
// means and variances lose precision, and fp16 sums of squares overflow). fp32 in: the module unchanged.
#pragma once

#include <torch/nn/modules/normalization.h>

namespace dreamlora::nn {

torch::Tensor group_norm_fp32(const torch::nn::GroupNorm& norm, const torch::Tensor& x);
torch::Tensor layer_norm_fp32(const torch::nn::LayerNorm& norm, const torch::Tensor& x);

}  // namespace dreamlora::nn
