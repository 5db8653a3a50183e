// LoRA-adapted UNet against diffusers+peft (lora.unet.out and every LoRA gradient), and gradient
// checkpointing: the same gradients with and without it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "test_util.h"

namespace dreamlora::unet {
namespace {

using dreamlora::testing::fixtures_dir;

const std::string kA = ".lora_A.weight", kB = ".lora_B.weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Enables an adapter on every layer named in a peft state dict and copies lora_A/lora_B into it.
void attach_peft_lora(torch::nn::Module& model, const std::map<std::string, torch::Tensor>& peft) {
  auto modules = model.named_modules();
  for (const auto& [key, a] : peft) {
    if (!ends_with(key, kA)) continue;
    const auto path = key.substr(0, key.size() - kA.size());
    auto* linear = modules[path]->as<nn::LinearWithLoraImpl>();
    ASSERT_NE(linear, nullptr) << path;
    linear->enable_lora({a.size(0), static_cast<double>(a.size(0)), 0.0});
    torch::NoGradGuard no_grad;
    linear->lora->down->weight.copy_(a);
    linear->lora->up->weight.copy_(peft.at(path + kB));
  }
}

// max |a - b| / max |b|
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

struct LoraFixture {
  UNet2DConditionModel unet{nullptr};
  std::map<std::string, torch::Tensor> ref;
};

LoraFixture load_lora_fixture() {
  LoraFixture f;
  const auto dir = fixtures_dir() / "tiny-sd";
  f.unet = UNet2DConditionModelImpl::load(dir / "unet");
  attach_peft_lora(*f.unet,
                   io::safetensors::File::open(dir / "lora" / "peft_state_dict.safetensors").load_all());
  f.ref = io::safetensors::File::open(dir / "reference.safetensors").load_all();
  return f;
}

// Runs the reference loss backward and returns the worst relative gradient error over all LoRA params.
double lora_gradient_error(LoraFixture& f, bool checkpointing) {
  f.unet->train();
  f.unet->set_gradient_checkpointing(checkpointing);
  f.unet->zero_grad();
  auto out = f.unet->forward(f.ref.at("unet.sample"), f.ref.at("unet.timesteps"),
                             f.ref.at("unet.encoder_hidden_states"));
  auto loss = torch::mse_loss(out, f.ref.at("lora.grad.target"));
  EXPECT_NEAR(loss.item<double>(), f.ref.at("lora.grad.loss").item<double>(), 1e-6);
  loss.backward();
  double worst = 0;
  int checked = 0;
  for (const auto& item : f.unet->named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    const auto pos = name.find(".lora.");
    if (pos == std::string::npos) continue;
    const auto peft = name.substr(0, pos) + (ends_with(name, ".lora.down.weight") ? kA : kB);
    EXPECT_TRUE(p.grad().defined()) << name;
    if (!p.grad().defined()) continue;
    worst = std::max(worst, rel_err(p.grad(), f.ref.at("lora.all_grads." + peft)));
    ++checked;
  }
  EXPECT_EQ(checked, 96);
  return worst;
}

TEST(UNetLoRA, AdaptedOutputMatchesPeft) {
  REQUIRE_FIXTURES();
  auto f = load_lora_fixture();
  torch::NoGradGuard no_grad;
  auto out = f.unet->forward(f.ref.at("unet.sample"), f.ref.at("unet.timesteps"),
                             f.ref.at("unet.encoder_hidden_states"));
  EXPECT_TENSOR_NEAR(out, f.ref.at("lora.unet.out"), 1e-5);
}

TEST(UNetLoRA, GradientsMatchPeftWithAndWithoutCheckpointing) {
  REQUIRE_FIXTURES();
  auto f = load_lora_fixture();
  const double plain = lora_gradient_error(f, false);
  std::cout << "[ parity ] LoRA gradients max relative error " << plain << std::endl;
  EXPECT_LE(plain, 1e-4);
  const double ckpt = lora_gradient_error(f, true);
  std::cout << "[ parity ] LoRA gradients with checkpointing max relative error " << ckpt << std::endl;
  EXPECT_LE(ckpt, 1e-4);
}

UNet2DConditionConfig small_config() {
  UNet2DConditionConfig c;
  c.block_out_channels = {8, 16};
  c.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
  c.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
  c.layers_per_block = {1, 1};
  c.only_cross_attention = {false, false};
  c.cross_attention_dim = {12, 12};
  c.transformer_layers_per_block = {2, 1};
  c.attention_head_dim = {2, 2};
  c.norm_num_groups = 4;
  return c;
}

// Gradients of the LoRA params and of the input sample, without/with checkpointing.
std::vector<torch::Tensor> small_unet_grads(UNet2DConditionModel& unet, bool checkpointing) {
  torch::manual_seed(3);
  auto sample = torch::randn({2, 4, 8, 8}).requires_grad_(true);
  auto context = torch::randn({2, 5, 12});
  unet->set_gradient_checkpointing(checkpointing);
  unet->zero_grad();
  unet->forward(sample, torch::tensor({3, 700}), context).square().mean().backward();
  std::vector<torch::Tensor> grads{sample.grad().clone()};
  for (const auto& p : unet->parameters()) {
    if (p.requires_grad()) grads.push_back(p.grad().clone());
  }
  return grads;
}

TEST(UNetGradientCheckpointing, GivesTheSameGradientsAsThePlainBackward) {
  torch::manual_seed(0);
  UNet2DConditionModel unet(small_config());
  unet->train();
  for (auto& p : unet->parameters()) p.requires_grad_(false);
  auto modules = unet->named_modules();
  for (const auto& path : {"down_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q",
                           "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v",
                           "mid_block.attentions.0.transformer_blocks.0.ff.net.2"}) {
    auto* linear = modules[path]->as<nn::LinearWithLoraImpl>();
    ASSERT_NE(linear, nullptr) << path;
    linear->enable_lora({2, 2.0, 0.0});
    torch::NoGradGuard no_grad;
    linear->lora->up->weight.normal_(0, 0.1);  // non-zero B so A gets a gradient too
  }
  // A resnet weight made trainable too: checkpointed resnets must pass gradients to their own params.
  unet->named_parameters()["down_blocks.0.resnets.0.conv1.weight"].requires_grad_(true);

  const auto plain = small_unet_grads(unet, false);
  const auto ckpt = small_unet_grads(unet, true);
  ASSERT_EQ(plain.size(), ckpt.size());
  ASSERT_EQ(plain.size(), 1u + 6u + 1u);  // sample, 3 x (down, up), conv1.weight
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_GT(plain[i].abs().max().item<double>(), 0.0) << "gradient " << i << " is zero";
    EXPECT_TENSOR_NEAR(ckpt[i], plain[i], 1e-6);
  }
}

}  // namespace
}  // namespace dreamlora::unet
