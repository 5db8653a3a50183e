// Modules built for loading skip their random initialisation but keep torch.nn's shapes, options and
// forward; outside the guard they initialise exactly as torch.nn does (seeded random models unchanged).
#include "dreamlora/nn/uninitialized.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/nn/linear.h"

namespace dreamlora::nn {
namespace {

TEST(SkipInit, OutsideTheGuardConvAndEmbeddingInitialiseAsTorchDoes) {
  EXPECT_FALSE(init_skipped());
  const auto options = torch::nn::Conv2dOptions(6, 8, 3).padding(1).groups(2);
  torch::manual_seed(7);
  torch::nn::Conv2d reference(options);
  torch::nn::Embedding reference_embedding(50, 4);
  torch::manual_seed(7);
  auto conv = conv2d(options);
  auto e = embedding(50, 4);
  EXPECT_TRUE(torch::equal(conv->weight, reference->weight));
  EXPECT_TRUE(torch::equal(conv->bias, reference->bias));
  EXPECT_TRUE(torch::equal(e->weight, reference_embedding->weight));
}

TEST(SkipInit, GuardedModulesHaveTheRealShapesAndComputeLikeTorch) {
  const auto options = torch::nn::Conv2dOptions(6, 8, 3).stride(2).padding(1).groups(2);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Embedding e{nullptr};
  LinearWithLora linear{nullptr};
  {
    SkipInitGuard guard;
    EXPECT_TRUE(init_skipped());
    conv = conv2d(options);
    e = embedding(50, 4);
    linear = LinearWithLora(5, 3);
  }
  EXPECT_FALSE(init_skipped());
  EXPECT_EQ(conv->weight.sizes(), (std::vector<int64_t>{8, 3, 3, 3}));
  EXPECT_EQ(conv->bias.sizes(), (std::vector<int64_t>{8}));
  EXPECT_EQ(conv->options.in_channels(), 6);
  EXPECT_EQ(conv->options.out_channels(), 8);
  EXPECT_EQ(e->weight.sizes(), (std::vector<int64_t>{50, 4}));
  EXPECT_EQ(linear->weight.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(conv->named_parameters().size(), 2u);

  torch::manual_seed(1);
  torch::nn::Conv2d reference(options);
  torch::NoGradGuard no_grad;
  conv->weight.copy_(reference->weight);
  conv->bias.copy_(reference->bias);
  auto x = torch::randn({2, 6, 9, 9});
  EXPECT_TRUE(torch::allclose(conv(x), reference(x)));
  e->weight.copy_(torch::arange(200, torch::kFloat32).reshape({50, 4}));
  EXPECT_TRUE(torch::equal(e(torch::tensor({49})), e->weight.narrow(0, 49, 1)));
}

}  // namespace
}  // namespace dreamlora::nn
