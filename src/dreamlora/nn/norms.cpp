#include "dreamlora/nn/norms.h"

#include <torch/torch.h>

namespace dreamlora::nn {

namespace {
bool all_fp32(const torch::Tensor& x, const torch::Tensor& weight) {
  return x.scalar_type() == torch::kFloat32 && (!weight.defined() || weight.scalar_type() == torch::kFloat32);
}
torch::Tensor fp32_or_undefined(const torch::Tensor& t) {
  return t.defined() ? t.to(torch::kFloat32) : t;
}
}  // namespace

torch::Tensor group_norm_fp32(const torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  if (all_fp32(x, norm->weight)) return norm.ptr()->forward(x);
  const auto& o = norm->options;
  return torch::group_norm(x.to(torch::kFloat32), o.num_groups(), fp32_or_undefined(norm->weight),
                           fp32_or_undefined(norm->bias), o.eps())
      .to(x.scalar_type());
}

torch::Tensor layer_norm_fp32(const torch::nn::LayerNorm& norm, const torch::Tensor& x) {
  if (all_fp32(x, norm->weight)) return norm.ptr()->forward(x);
  const auto& o = norm->options;
  return torch::layer_norm(x.to(torch::kFloat32), o.normalized_shape(), fp32_or_undefined(norm->weight),
                           fp32_or_undefined(norm->bias), o.eps())
      .to(x.scalar_type());
}

}  // namespace dreamlora::nn
