// LoRA injection: peft's target matching, gaussian init order, parameter listing, freezing, fuse/unfuse.
#include "dreamlora/lora/inject.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "lora_test_tree.h"
#include "test_util.h"

using namespace dreamlora;
using dreamlora::testing::add_linear;
using dreamlora::testing::add_module_at;

namespace {

std::shared_ptr<torch::nn::Module> small_tree() {
  auto root = std::make_shared<torch::nn::Module>();
  add_linear(*root, "blocks.0.attn1.to_q", 8, 8);
  add_linear(*root, "blocks.0.attn1.to_k", 6, 8);
  add_linear(*root, "blocks.0.attn1.to_out.0", 8, 8);
  add_linear(*root, "blocks.0.ff.net.0.proj", 8, 16);
  add_linear(*root, "blocks.0.ff.net.2", 16, 8);
  add_linear(*root, "blocks.1.attn1.to_q", 8, 8);
  add_linear(*root, "blocks.1.my_to_q", 8, 8);  // ends with "to_q" but not ".to_q": peft does not match it
  return root;
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, torch::Tensor>>& v) {
  std::vector<std::string> out;
  for (const auto& [n, t] : v) out.push_back(n);
  return out;
}

}  // namespace

TEST(LoRAInject, MatchesPathsEqualToOrEndingWithDotTarget) {
  EXPECT_TRUE(lora::matches_target("a.attn1.to_out.0", "to_out.0"));
  EXPECT_TRUE(lora::matches_target("to_q", "to_q"));
  EXPECT_FALSE(lora::matches_target("a.my_to_q", "to_q"));
  EXPECT_FALSE(lora::matches_target("a.to_out.0.x", "to_out.0"));
}

TEST(LoRAInject, EnablesAdaptersOnMatchingLinearsAndReportsCounts) {
  auto model = small_tree();
  nn::LoRAOptions options;
  options.rank = 2;
  options.alpha = 2;
  auto report = lora::inject_lora(*model, {"to_q", "to_out.0"}, options, at::detail::createCPUGenerator(1));
  EXPECT_EQ(report.modules, (std::vector<std::string>{"blocks.0.attn1.to_q", "blocks.0.attn1.to_out.0",
                                                      "blocks.1.attn1.to_q"}));
  EXPECT_EQ(report.per_target.at("to_q"), 2);
  EXPECT_EQ(report.per_target.at("to_out.0"), 1);
  EXPECT_EQ(report.num_tensors, 6);
  EXPECT_EQ(report.num_parameters, 3 * 2 * (8 + 8));
  EXPECT_EQ(names_of(lora::lora_parameters(*model)),
            (std::vector<std::string>{
                "blocks.0.attn1.to_q.lora.down.weight", "blocks.0.attn1.to_q.lora.up.weight",
                "blocks.0.attn1.to_out.0.lora.down.weight", "blocks.0.attn1.to_out.0.lora.up.weight",
                "blocks.1.attn1.to_q.lora.down.weight", "blocks.1.attn1.to_q.lora.up.weight"}));
  std::cout << report.summary() << std::endl;
}

TEST(LoRAInject, TargetMatchingNothingIsAnErrorNamingIt) {
  auto model = small_tree();
  try {
    lora::inject_lora(*model, {"to_q", "to_v"}, {}, at::detail::createCPUGenerator(1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'to_v'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(lora::lora_parameters(*model).empty()) << "nothing may be injected when a target is bad";
}

TEST(LoRAInject, ConvTargetIsAClearError) {
  auto model = small_tree();
  add_module_at(*model, "blocks.0.proj_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 1)));
  try {
    lora::inject_lora(*model, {"proj_in"}, {}, at::detail::createCPUGenerator(1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("Conv2d"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks.0.proj_in"), std::string::npos) << msg;
  }
}

TEST(LoRAInject, GaussianInitDrawsFromGeneratorInParameterOrderAndZeroesB) {
  auto model = small_tree();
  nn::LoRAOptions options;
  options.rank = 4;
  lora::inject_lora(*model, {"to_k", "to_q"}, options, at::detail::createCPUGenerator(7));
  // Replay: A of each adapted layer in named_parameters order from one stream with std 1/r.
  auto gen = at::detail::createCPUGenerator(7);
  for (const auto& [name, p] : lora::lora_parameters(*model)) {
    if (name.find(".lora.up.") != std::string::npos) {
      EXPECT_EQ(p.abs().max().item<float>(), 0.0f) << name;
      continue;
    }
    auto expected = torch::empty(p.sizes()).normal_(0.0, 1.0 / options.rank, gen);
    EXPECT_TRUE(torch::equal(p, expected)) << name;
  }
}

TEST(LoRAInject, FreezeLeavesOnlyAdaptersTrainable) {
  auto model = small_tree();
  lora::inject_lora(*model, {"to_q"}, {}, at::detail::createCPUGenerator(1));
  int64_t trainable = lora::freeze_all_but_lora(*model);
  int64_t counted = 0;
  for (const auto& item : model->named_parameters()) {
    bool is_lora = item.key().find(".lora.") != std::string::npos;
    EXPECT_EQ(item.value().requires_grad(), is_lora) << item.key();
    if (is_lora) counted += item.value().numel();
  }
  EXPECT_EQ(trainable, counted);
  EXPECT_GT(trainable, 0);
}

TEST(LoRAInject, FuseMatchesAdapterOutputAndUnfuseRestoresBaseExactly) {
  auto model = small_tree();
  nn::LoRAOptions options;
  options.rank = 2;
  options.alpha = 3;  // scale 1.5
  lora::inject_lora(*model, {"to_q", "to_k"}, options, at::detail::createCPUGenerator(3));
  auto layers = lora::lora_layers(*model);
  ASSERT_EQ(layers.size(), 3u);
  std::vector<torch::Tensor> base;
  torch::NoGradGuard no_grad;
  for (auto& [path, l] : layers) {
    l->lora->up->weight.normal_();  // make the adapter non-zero
    base.push_back(l->weight.clone());
  }
  auto x = torch::randn({3, 8});
  auto& [q_path, q] = layers[0];
  auto with_adapter = q->forward(x);
  lora::fuse_lora(*model);
  auto fused = q->forward(x);
  EXPECT_TENSOR_NEAR(fused, with_adapter, 1e-5);
  EXPECT_FALSE(torch::equal(q->weight, base[0]));
  lora::unfuse_lora(*model);
  for (size_t i = 0; i < layers.size(); ++i)
    EXPECT_TRUE(torch::equal(layers[i].second->weight, base[i])) << i;
  EXPECT_TENSOR_NEAR(q->forward(x), with_adapter, 0.0);
  lora::remove_lora(*model);
  EXPECT_TRUE(lora::lora_parameters(*model).empty());
}
