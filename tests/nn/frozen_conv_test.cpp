// Tests for nn::conv2d_forward: a frozen convolution's input gradient equals autograd's bit for bit, and
// its input is no longer kept alive for backward.
#include "dreamlora/nn/frozen_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace {

struct ConvCase {
  int64_t in, out, kernel, stride, padding;
  bool bias;
};

torch::nn::Conv2d frozen_conv(const ConvCase& c) {
  torch::manual_seed(3);
  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(c.in, c.out, c.kernel).stride(c.stride).padding(c.padding).bias(c.bias));
  for (auto& p : conv->parameters()) p.set_requires_grad(false);
  return conv;
}

// d(sum(conv(x) * g))/dx through the given forward.
template <typename Forward>
std::pair<torch::Tensor, torch::Tensor> output_and_input_grad(const ConvCase& c, Forward forward) {
  torch::manual_seed(5);
  auto x = torch::randn({2, c.in, 9, 10}, torch::requires_grad());
  auto y = forward(x);
  auto g = torch::randn(y.sizes());
  (y * g).sum().backward();
  return {y.detach(), x.grad()};
}

TEST(FrozenConv, OutputAndInputGradientEqualAutogradsBitForBit) {
  for (const ConvCase& c : {ConvCase{4, 6, 3, 1, 1, true}, ConvCase{4, 4, 3, 2, 0, true},
                            ConvCase{6, 3, 1, 1, 0, false}, ConvCase{3, 5, 3, 2, 1, true}}) {
    auto conv = frozen_conv(c);
    auto [y_ref, dx_ref] = output_and_input_grad(c, [&](const torch::Tensor& x) { return conv(x); });
    auto [y, dx] = output_and_input_grad(
        c, [&](const torch::Tensor& x) { return dreamlora::nn::conv2d_forward(conv, x); });
    EXPECT_TRUE(torch::equal(y, y_ref)) << "kernel " << c.kernel << " stride " << c.stride;
    EXPECT_TRUE(torch::equal(dx, dx_ref)) << "kernel " << c.kernel << " stride " << c.stride;
  }
}

// Whether x's tensor is still alive after the caller dropped it, with y (and its graph) held.
template <typename Forward>
bool input_kept_for_backward(Forward forward) {
  auto leaf = torch::randn({1, 4, 8, 8}, torch::requires_grad());
  auto x = leaf * 2;  // not a leaf: only the graph could keep it
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> weak(x.getIntrusivePtr());
  auto y = forward(x);
  x = torch::Tensor();
  const bool kept = !weak.expired();
  y.sum().backward();
  return kept;
}

TEST(FrozenConv, DoesNotKeepItsInputWhileAutogradsConvolutionDoes) {
  auto conv = frozen_conv({4, 4, 3, 1, 1, true});
  EXPECT_TRUE(input_kept_for_backward([&](const torch::Tensor& x) { return conv(x); }));
  EXPECT_FALSE(input_kept_for_backward(
      [&](const torch::Tensor& x) { return dreamlora::nn::conv2d_forward(conv, x); }));
}

TEST(FrozenConv, TrainableWeightsStillGetTheirGradients) {
  torch::manual_seed(3);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3).padding(1));
  auto x = torch::randn({1, 3, 6, 6});
  dreamlora::nn::conv2d_forward(conv, x).sum().backward();
  auto expected = conv->weight.grad().clone();
  conv->weight.grad().zero_();
  conv(x).sum().backward();
  EXPECT_TRUE(expected.defined());
  EXPECT_TRUE(torch::equal(expected, conv->weight.grad()));
}

}  // namespace
