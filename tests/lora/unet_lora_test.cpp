// LoRA files applied to the real UNet: the fixture LoRA in every format reproduces diffusers'
// lora.unet.out, its gradients match the reference, fuse/unfuse restores the base, and injection
// with the default targets creates exactly peft's adapter set.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "test_util.h"

using namespace dreamlora;
namespace fs = std::filesystem;
namespace dltest = dreamlora::testing;

namespace {

struct UNetCase {
  std::string family;
  bool sdxl;
};

struct Loaded {
  unet::UNet2DConditionModel unet{nullptr};
  std::map<std::string, torch::Tensor> ref;
};

Loaded load_unet(const UNetCase& c) {
  Loaded l;
  l.unet = unet::UNet2DConditionModelImpl::load(dltest::fixtures_dir() / c.family / "unet");
  l.ref = io::safetensors::File::open(dltest::fixtures_dir() / c.family / "reference.safetensors").load_all();
  return l;
}

torch::Tensor run(Loaded& l, const UNetCase& c) {
  return l.unet->forward(l.ref.at("unet.sample"), l.ref.at("unet.timesteps"),
                         l.ref.at("unet.encoder_hidden_states"),
                         c.sdxl ? l.ref.at("unet.added_cond.text_embeds") : torch::Tensor(),
                         c.sdxl ? l.ref.at("unet.added_cond.time_ids") : torch::Tensor());
}

fs::path lora_file(const UNetCase& c, const std::string& name) {
  return dltest::fixtures_dir() / c.family / "lora" / name;
}

double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-30);
}

}  // namespace

class UNetLoRA : public ::testing::TestWithParam<UNetCase> {};

TEST_P(UNetLoRA, FixtureLoRAInEveryFormatGivesDiffusersOutput) {
  REQUIRE_FIXTURES();
  const auto c = GetParam();
  auto l = load_unet(c);
  torch::NoGradGuard no_grad;
  auto layout = lora::UNetLayout::from_unet(*l.unet);
  std::vector<std::pair<std::string, lora::LoRAWeights>> files = {
      {"diffusers", lora::load_lora_file(lora_file(c, "pytorch_lora_weights.safetensors"))},
      {"peft", lora::load_lora_file(lora_file(c, "peft_state_dict.safetensors"))},
      {"kohya", lora::load_lora_file(lora_file(c, "pytorch_lora_weights_kohya.safetensors"))}};
  // kohya with LDM block names, written from the diffusers file and read back through the layout.
  auto ldm_path = dltest::make_temp_dir("unet_lora_ldm") / "ldm.safetensors";
  lora::KohyaOptions ldm;
  ldm.sdxl = c.sdxl;
  ldm.ldm_layout = layout;
  lora::save_kohya(ldm_path, files[0].second, ldm);
  files.emplace_back("kohya-ldm", lora::load_lora_file(ldm_path, layout));

  torch::Tensor first;
  for (auto& [name, weights] : files) {
    lora::remove_lora(*l.unet);
    lora::apply_lora(*l.unet, weights.components.at("unet"), name);
    auto out = run(l, c);
    std::cout << name << ": ";
    EXPECT_TENSOR_NEAR(out, l.ref.at("lora.unet.out"), 2e-5);
    if (!first.defined()) first = out;
    EXPECT_TRUE(torch::equal(out, first)) << name << " differs from the diffusers file's output";
  }
}

TEST_P(UNetLoRA, GradientsOfLoRAParametersMatchReference) {
  REQUIRE_FIXTURES();
  const auto c = GetParam();
  auto l = load_unet(c);
  lora::apply_lora(
      *l.unet, lora::load_lora_file(lora_file(c, "pytorch_lora_weights.safetensors")).components.at("unet"),
      "fixture");
  lora::freeze_all_but_lora(*l.unet);
  l.unet->train();
  auto loss = torch::mse_loss(run(l, c), l.ref.at("lora.grad.target"));
  EXPECT_NEAR(loss.item<double>(), l.ref.at("lora.grad.loss").item<double>(), 1e-6);
  loss.backward();
  double worst = 0;
  int checked = 0;
  for (const auto& [name, p] : lora::lora_parameters(*l.unet)) {
    auto pos = name.find(".lora.");
    bool down = name.find(".lora.down.") != std::string::npos;
    std::string peft = name.substr(0, pos) + (down ? ".lora_A.weight" : ".lora_B.weight");
    ASSERT_TRUE(p.grad().defined()) << name;
    worst = std::max(worst, rel_err(p.grad(), l.ref.at("lora.all_grads." + peft)));
    auto three = l.ref.find("lora.grad." + peft);
    if (three != l.ref.end()) EXPECT_LE(rel_err(p.grad(), three->second), 1e-4) << peft;
    ++checked;
  }
  int base_with_grad = 0;
  for (const auto& p : l.unet->parameters())
    if (p.grad().defined()) ++base_with_grad;
  EXPECT_EQ(base_with_grad, checked) << "only LoRA parameters may receive gradients";
  EXPECT_EQ(checked, c.sdxl ? 192 : 96);
  std::cout << "[ parity ] " << c.family << " worst LoRA gradient relative error " << worst << std::endl;
  EXPECT_LE(worst, 1e-4);
}

TEST_P(UNetLoRA, FuseGivesAdapterOutputAndUnfuseRestoresBase) {
  REQUIRE_FIXTURES();
  const auto c = GetParam();
  auto l = load_unet(c);
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> base;
  for (const auto& item : l.unet->named_parameters()) base[item.key()] = item.value().clone();
  lora::apply_lora(
      *l.unet, lora::load_lora_file(lora_file(c, "pytorch_lora_weights.safetensors")).components.at("unet"),
      "fixture");
  lora::fuse_lora(*l.unet);
  EXPECT_TENSOR_NEAR(run(l, c), l.ref.at("lora.unet.out"), 2e-5);
  lora::unfuse_lora(*l.unet);
  for (const auto& [name, t] : base) EXPECT_TRUE(torch::equal(l.unet->named_parameters()[name], t)) << name;
  lora::remove_lora(*l.unet);
  EXPECT_TENSOR_NEAR(run(l, c), l.ref.at("unet.out"), 1e-5);
}

TEST_P(UNetLoRA, DefaultTargetsCreateExactlyPeftsAdapters) {
  REQUIRE_FIXTURES();
  const auto c = GetParam();
  auto l = load_unet(c);
  nn::LoRAOptions options;
  auto report =
      lora::inject_lora(*l.unet, lora::kUNetDefaultTargets, options, at::detail::createCPUGenerator(0));
  auto peft = io::safetensors::File::open(lora_file(c, "peft_state_dict.safetensors"));
  std::set<std::string> expected, ours;
  for (const auto& k : peft.names()) {
    auto pos = k.find(".lora_");
    expected.insert(k.substr(0, pos) +
                    (k.find(".lora_A.") != std::string::npos ? ".lora.down.weight" : ".lora.up.weight"));
  }
  for (const auto& [name, p] : lora::lora_parameters(*l.unet)) {
    ours.insert(name);
    auto pos = name.find(".lora.");
    auto peft_name = name.substr(0, pos) +
                     (name.find(".lora.down.") != std::string::npos ? ".lora_A.weight" : ".lora_B.weight");
    EXPECT_EQ(p.sizes(), torch::IntArrayRef(peft.info(peft_name).shape)) << name;
  }
  EXPECT_EQ(ours, expected);
  EXPECT_EQ(report.num_tensors, static_cast<int64_t>(peft.names().size()));
  // A fresh adapter is a no-op (B = 0).
  torch::NoGradGuard no_grad;
  EXPECT_TENSOR_NEAR(run(l, c), l.ref.at("unet.out"), 1e-5);
}

TEST_P(UNetLoRA, WideTargetsNeedLinearProjections) {
  REQUIRE_FIXTURES();
  const auto c = GetParam();
  auto l = load_unet(c);
  if (c.sdxl) {
    auto report = lora::inject_lora(*l.unet, lora::kUNetWideTargets, {}, at::detail::createCPUGenerator(0));
    EXPECT_GT(report.per_target.at("proj_in"), 0);
    EXPECT_GT(report.per_target.at("ff.net.2"), 0);
  } else {
    EXPECT_THROW(lora::inject_lora(*l.unet, lora::kUNetWideTargets, {}, at::detail::createCPUGenerator(0)),
                 Error);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, UNetLoRA,
                         ::testing::Values(UNetCase{"tiny-sd", false}, UNetCase{"tiny-sdxl", true}),
                         [](const auto& info) {
                           return info.param.sdxl ? std::string("sdxl") : std::string("sd");
                         });
