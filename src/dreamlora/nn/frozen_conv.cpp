#include "dreamlora/nn/frozen_conv.h"

#include <torch/torch.h>
#include <torch/version.h>

#include "dreamlora/common/error.h"

namespace dreamlora::nn {

namespace {

// The explicit padding of the options; the "same"/"valid" forms are not used by any model here.
std::vector<int64_t> explicit_padding(const torch::nn::detail::ConvNdOptions<2>& options) {
#if TORCH_VERSION_MAJOR >= 2
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&options.padding());
#else
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
#endif
  DL_CHECK(padding != nullptr, "conv2d_forward: only explicit padding is supported");
  return torch::IntArrayRef(*padding).vec();
}

class FrozenConv2d : public torch::autograd::Function<FrozenConv2d> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               torch::nn::Conv2dImpl* conv) {
    ctx->saved_data["conv"] = reinterpret_cast<int64_t>(conv);
    ctx->saved_data["input_sizes"] = x.sizes().vec();
    torch::NoGradGuard no_grad;
    return conv->forward(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* conv = reinterpret_cast<torch::nn::Conv2dImpl*>(ctx->saved_data["conv"].toInt());
    const auto& o = conv->options;
    const auto grad = grads[0];
    // The input's values are not read for its own gradient; an empty tensor of its shape and layout picks
    // the same kernel autograd's convolution would.
    auto input_like = torch::empty(ctx->saved_data["input_sizes"].toIntVector(), grad.options());
    auto grad_input = std::get<0>(at::convolution_backward(
        grad, input_like, conv->weight, c10::nullopt, torch::IntArrayRef(o.stride()).vec(),
        explicit_padding(o), torch::IntArrayRef(o.dilation()).vec(), false, std::vector<int64_t>{0, 0},
        o.groups(), {true, false, false}));
    return torch::autograd::variable_list{grad_input, torch::Tensor()};
  }
};

bool needs_no_gradient(const torch::Tensor& t) {
  return !t.defined() || !t.requires_grad();
}

}  // namespace

torch::Tensor conv2d_forward(torch::nn::Conv2d conv, const torch::Tensor& x) {
  const bool frozen = needs_no_gradient(conv->weight) && needs_no_gradient(conv->bias);
  if (!frozen || !x.requires_grad() || !torch::GradMode::is_enabled()) return conv->forward(x);
  return FrozenConv2d::apply(x, conv.get());
}

}  // namespace dreamlora::nn
