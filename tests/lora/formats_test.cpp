// LoRA files: our diffusers/kohya files against the fixtures' (keys, shapes, dtypes, values), reading
// every format to the same weights, round trips, SDXL LDM names, and describe_lora_file.
#include "dreamlora/lora/formats.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/inject.h"
#include "lora_test_tree.h"
#include "test_util.h"

using namespace dreamlora;
namespace fs = std::filesystem;
namespace dltest = dreamlora::testing;

namespace {

fs::path lora_dir(const std::string& family) {
  return dltest::fixtures_dir() / family / "lora";
}

// The fixture LoRA loaded into a tree of the fixture's module paths, then collected back.
lora::LoRAWeights fixture_weights_via_model(const std::string& family) {
  auto model = dltest::tree_from_peft_file(lora_dir(family) / "peft_state_dict.safetensors");
  auto w = lora::load_lora_file(lora_dir(family) / "pytorch_lora_weights.safetensors");
  lora::apply_lora(*model, w.components.at("unet"), "fixture");
  lora::LoRAWeights out;
  out.components["unet"] = lora::collect_lora(*model);
  return out;
}

// Same key set, and per key the same dtype, shape and bytes.
void expect_same_file_contents(const fs::path& ours, const fs::path& reference, bool compare_values = true) {
  auto a = io::safetensors::File::open(ours);
  auto b = io::safetensors::File::open(reference);
  auto an = a.names(), bn = b.names();
  EXPECT_EQ(std::set<std::string>(an.begin(), an.end()), std::set<std::string>(bn.begin(), bn.end()));
  for (const auto& name : bn) {
    if (!a.contains(name)) continue;
    EXPECT_EQ(a.info(name).dtype, b.info(name).dtype) << name;
    EXPECT_EQ(a.info(name).shape, b.info(name).shape) << name;
    if (compare_values) EXPECT_TRUE(torch::equal(a.get(name), b.get(name))) << name;
  }
}

void expect_same_weights(const lora::LoRAWeights& a, const lora::LoRAWeights& b) {
  ASSERT_EQ(a.components.size(), b.components.size());
  for (const auto& [component, modules] : b.components) {
    ASSERT_TRUE(a.components.count(component)) << component;
    const auto& am = a.components.at(component);
    ASSERT_EQ(am.size(), modules.size()) << component;
    for (const auto& [path, w] : modules) {
      ASSERT_TRUE(am.count(path)) << component << " " << path;
      EXPECT_TRUE(torch::equal(am.at(path).down, w.down)) << path;
      EXPECT_TRUE(torch::equal(am.at(path).up, w.up)) << path;
      EXPECT_EQ(am.at(path).alpha, w.alpha) << path;
    }
  }
}

lora::UNetLayout tiny_sdxl_layout() {
  return lora::UNetLayout::from_config(2, 2, {"CrossAttnUpBlock2D", "UpBlock2D"});
}

}  // namespace

class LoRAFixtureFiles : public ::testing::TestWithParam<std::string> {};

TEST_P(LoRAFixtureFiles, OurDiffusersFileEqualsTheFixtureFile) {
  REQUIRE_FIXTURES();
  auto weights = fixture_weights_via_model(GetParam());
  auto out = dltest::make_temp_dir("lora_diffusers") / "pytorch_lora_weights.safetensors";
  lora::SaveOptions options;
  options.targets = lora::kUNetDefaultTargets;
  lora::save_diffusers(out, weights, options);
  expect_same_file_contents(out, lora_dir(GetParam()) / "pytorch_lora_weights.safetensors");
  auto md = io::safetensors::File::open(out).metadata();
  EXPECT_EQ(md.at("format"), "pt");
  EXPECT_EQ(md.at("dreamlora.rank"), "4");
  EXPECT_EQ(md.at("dreamlora.alpha"), "4");
  EXPECT_EQ(md.at("dreamlora.targets"), "to_q,to_k,to_v,to_out.0");
}

TEST_P(LoRAFixtureFiles, OurKohyaFileEqualsTheFixtureFile) {
  REQUIRE_FIXTURES();
  auto weights = fixture_weights_via_model(GetParam());
  auto out = dltest::make_temp_dir("lora_kohya") / "kohya.safetensors";
  lora::save_kohya(out, weights);  // diffusers block names, as the fixture's convert_state_dict_to_kohya
  expect_same_file_contents(out, lora_dir(GetParam()) / "pytorch_lora_weights_kohya.safetensors");
}

TEST_P(LoRAFixtureFiles, EveryFormatReadsToTheSameWeights) {
  REQUIRE_FIXTURES();
  auto diffusers = lora::load_lora_file(lora_dir(GetParam()) / "pytorch_lora_weights.safetensors");
  auto peft = lora::load_lora_file(lora_dir(GetParam()) / "peft_state_dict.safetensors");
  auto kohya = lora::load_lora_file(lora_dir(GetParam()) / "pytorch_lora_weights_kohya.safetensors");
  EXPECT_EQ(diffusers.num_modules(), GetParam() == "tiny-sd" ? 48 : 96);
  expect_same_weights(peft, diffusers);
  expect_same_weights(kohya, diffusers);
  for (const auto& [path, w] : kohya.components.at("unet")) EXPECT_EQ(w.alpha, 4.0) << path;
}

TEST_P(LoRAFixtureFiles, RoundTripsThroughEveryFormat) {
  REQUIRE_FIXTURES();
  auto weights = fixture_weights_via_model(GetParam());
  auto dir = dltest::make_temp_dir("lora_roundtrip");
  lora::save_diffusers(dir / "d.safetensors", weights);
  expect_same_weights(lora::load_lora_file(dir / "d.safetensors"), weights);
  lora::save_kohya(dir / "k.safetensors", weights);
  expect_same_weights(lora::load_lora_file(dir / "k.safetensors"), weights);
  lora::KohyaOptions ldm;
  ldm.sdxl = true;
  ldm.ldm_layout = GetParam() == "tiny-sd"
                       ? lora::UNetLayout::from_config(2, 2, {"UpBlock2D", "CrossAttnUpBlock2D"})
                       : tiny_sdxl_layout();
  lora::save_kohya(dir / "l.safetensors", weights, ldm);
  expect_same_weights(lora::load_lora_file(dir / "l.safetensors", ldm.ldm_layout), weights);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoRAFixtureFiles, ::testing::Values("tiny-sd", "tiny-sdxl"));

TEST(LoRAFormats, SdxlKohyaFileUsesLdmBlockNamesAndReadsBack) {
  REQUIRE_FIXTURES();
  auto weights = fixture_weights_via_model("tiny-sdxl");
  lora::KohyaOptions options;
  options.sdxl = true;
  options.ldm_layout = tiny_sdxl_layout();
  auto keys = lora::to_kohya_tensors(weights, options);
  EXPECT_TRUE(keys.count("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"));
  EXPECT_TRUE(keys.count("lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0.alpha"));
  EXPECT_TRUE(keys.count("lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_v.lora_up.weight"));
  // Same tensors as the fixture's diffusers-named kohya file under the mapped names.
  auto reference =
      io::safetensors::File::open(lora_dir("tiny-sdxl") / "pytorch_lora_weights_kohya.safetensors");
  EXPECT_EQ(keys.size(), reference.names().size());
  for (const auto& name : reference.names()) {
    const std::string prefix = "lora_unet_";
    auto dot = name.find('.');
    std::string path = lora::kohya_stem_to_path(name.substr(prefix.size(), dot - prefix.size()));
    std::string ldm = prefix + lora::path_to_kohya_stem(lora::diffusers_to_ldm(path, *options.ldm_layout)) +
                      name.substr(dot);
    ASSERT_TRUE(keys.count(ldm)) << name << " -> " << ldm;
    EXPECT_TRUE(torch::equal(keys.at(ldm), reference.get(name))) << ldm;
    EXPECT_EQ(keys.at(ldm).scalar_type(), reference.get(name).scalar_type()) << ldm;
  }
}

TEST(LoRAFormats, LdmNamesOfSdxlBaseMatchKohyaAndRoundTrip) {
  auto layout = lora::UNetLayout::sdxl_base();
  const std::vector<std::pair<std::string, std::string>> known = {
      {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
       "input_blocks.4.1.transformer_blocks.0.attn1.to_q"},
      {"down_blocks.1.attentions.1.proj_in", "input_blocks.5.1.proj_in"},
      {"down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
       "input_blocks.8.1.transformer_blocks.9.ff.net.2"},
      {"down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"},
      {"down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"},
      {"mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
       "middle_block.1.transformer_blocks.0.attn2.to_out.0"},
      {"mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"},
      {"up_blocks.0.attentions.0.proj_out", "output_blocks.0.1.proj_out"},
      {"up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_k",
       "output_blocks.2.1.transformer_blocks.0.attn1.to_k"},
      {"up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"},
      {"up_blocks.1.attentions.2.proj_in", "output_blocks.5.1.proj_in"},
      {"up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"},
      {"up_blocks.2.resnets.0.conv2", "output_blocks.6.0.out_layers.3"},
      {"time_embedding.linear_1", "time_embed.0"},
      {"add_embedding.linear_2", "label_emb.0.2"}};
  for (const auto& [diffusers, ldm] : known) {
    EXPECT_EQ(lora::diffusers_to_ldm(diffusers, layout), ldm);
    EXPECT_EQ(lora::ldm_to_diffusers(ldm, layout), diffusers);
  }
  // An SD1-shaped layout (4 blocks, upsampler after a resnet-only up block) round trips too.
  auto sd1 = lora::UNetLayout::from_config(
      4, 2, {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"});
  for (int b = 0; b < 4; ++b) {
    for (int j = 0; j < 3; ++j) {
      for (std::string p : {str("up_blocks.", b, ".resnets.", j, ".conv1"),
                            str("up_blocks.", b, ".attentions.", j, ".transformer_blocks.0.attn2.to_k")})
        EXPECT_EQ(lora::ldm_to_diffusers(lora::diffusers_to_ldm(p, sd1), sd1), p);
      if (j < 2) {
        std::string p = str("down_blocks.", b, ".attentions.", j, ".proj_out");
        EXPECT_EQ(lora::ldm_to_diffusers(lora::diffusers_to_ldm(p, sd1), sd1), p);
      }
    }
    if (b < 3) {
      std::string up = str("up_blocks.", b, ".upsamplers.0.conv");
      EXPECT_EQ(lora::ldm_to_diffusers(lora::diffusers_to_ldm(up, sd1), sd1), up);
    }
  }
  EXPECT_EQ(lora::diffusers_to_ldm("up_blocks.0.upsamplers.0.conv", sd1), "output_blocks.2.1.conv");
  EXPECT_THROW(lora::diffusers_to_ldm("down_blocks.3.attentions.0.proj_in", layout), Error);
}

TEST(LoRAFormats, KohyaStemsSplitBackIntoModulePaths) {
  EXPECT_EQ(lora::kohya_stem_to_path("down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0"),
            "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0");
  EXPECT_EQ(lora::kohya_stem_to_path("mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"),
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj");
  EXPECT_EQ(lora::kohya_stem_to_path("text_model_encoder_layers_11_self_attn_out_proj"),
            "text_model.encoder.layers.11.self_attn.out_proj");
  EXPECT_EQ(lora::kohya_stem_to_path("text_model_encoder_layers_3_mlp_fc2"),
            "text_model.encoder.layers.3.mlp.fc2");
  EXPECT_EQ(lora::kohya_stem_to_path("input_blocks_4_1_proj_in"), "input_blocks.4.1.proj_in");
}

TEST(LoRAFormats, TextEncoderKeysFollowDiffusersAndKohyaForSd1AndSdxl) {
  auto te = std::make_shared<torch::nn::Module>();
  dltest::add_linear(*te, "text_model.encoder.layers.0.self_attn.q_proj", 8, 8);
  dltest::add_linear(*te, "text_model.encoder.layers.0.mlp.fc1", 8, 12);
  lora::inject_lora(*te, {"q_proj", "fc1"}, {}, at::detail::createCPUGenerator(0));
  lora::LoRAWeights w;
  w.components["text_encoder"] = lora::collect_lora(*te);
  auto d = lora::to_diffusers_tensors(w, true);
  EXPECT_TRUE(
      d.count("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"));
  EXPECT_TRUE(d.count("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight"));
  auto k = lora::to_kohya_tensors(w, {});
  EXPECT_TRUE(k.count("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"));
  w.components["text_encoder_2"] = w.components["text_encoder"];
  auto k2 = lora::to_kohya_tensors(w, {});
  EXPECT_TRUE(k2.count("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"));
  EXPECT_TRUE(k2.count("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"));
  auto back = lora::parse_lora_tensors(k2, {}, "te test");
  expect_same_weights(back, w);
  auto back_d = lora::parse_lora_tensors(lora::to_diffusers_tensors(w, true), {{"format", "pt"}}, "te test");
  expect_same_weights(back_d, w);
}

TEST(LoRAFormats, PeftKeysWithWrapperPrefixAndAdapterNameAreRead) {
  auto down = torch::randn({2, 8}), up = torch::randn({8, 2});
  const std::string path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
  auto w = lora::parse_lora_tensors({{"base_model.model." + path + ".lora_A.default.weight", down},
                                     {"base_model.model." + path + ".lora_B.default.weight", up}},
                                    {}, "peft test");
  ASSERT_TRUE(w.components.at("unet").count(path));
  EXPECT_TRUE(torch::equal(w.components.at("unet").at(path).down, down));
  EXPECT_EQ(w.components.at("unet").at(path).alpha, 2.0);
}

TEST(LoRAFormats, AlphaOtherThanRankIsBakedIntoDiffusersUpOrKeptInMetadata) {
  auto model = std::make_shared<torch::nn::Module>();
  dltest::add_linear(*model, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", 8, 8);
  nn::LoRAOptions options;
  options.rank = 4;
  options.alpha = 1;  // scale 0.25
  lora::inject_lora(*model, {"to_q"}, options, at::detail::createCPUGenerator(0));
  {
    torch::NoGradGuard g;
    lora::lora_layers(*model)[0].second->lora->up->weight.normal_();
  }
  lora::LoRAWeights w;
  w.components["unet"] = lora::collect_lora(*model);
  const auto& m = w.components["unet"].begin()->second;
  auto dir = dltest::make_temp_dir("lora_alpha");
  lora::save_diffusers(dir / "baked.safetensors", w);
  auto baked = lora::load_lora_file(dir / "baked.safetensors").components.at("unet").begin()->second;
  EXPECT_EQ(baked.alpha, 4.0);  // any diffusers reader uses scale 1 on these weights
  EXPECT_TENSOR_NEAR(baked.up, m.up * 0.25, 0.0);
  lora::SaveOptions raw;
  raw.bake_alpha_into_up = false;
  lora::save_diffusers(dir / "raw.safetensors", w, raw);
  expect_same_weights(lora::load_lora_file(dir / "raw.safetensors"), w);
  lora::save_kohya(dir / "k.safetensors", w);
  expect_same_weights(lora::load_lora_file(dir / "k.safetensors"), w);
}

TEST(LoRAFormats, ApplyToAModelWithoutTheModuleListsIt) {
  auto model = std::make_shared<torch::nn::Module>();
  dltest::add_linear(*model, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", 8, 8);
  lora::LoRAModules modules;
  modules["mid_block.attentions.0.transformer_blocks.0.attn1.to_k"] = {torch::zeros({2, 8}),
                                                                       torch::zeros({8, 2}), 2};
  try {
    lora::apply_lora(*model, modules, "some.safetensors");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("some.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("attn1.to_k"), std::string::npos) << msg;
  }
}

TEST(LoRAFormats, DescribeReportsFormatFamilyRanksTargetsAndUnknownKeys) {
  REQUIRE_FIXTURES();
  auto sd = lora::describe_lora_file(lora_dir("tiny-sd") / "pytorch_lora_weights.safetensors");
  std::cout << sd.to_string();
  EXPECT_EQ(sd.format, lora::LoRAFormat::diffusers);
  EXPECT_EQ(sd.family, lora::ModelFamily::sd1);
  EXPECT_EQ(sd.ranks, std::vector<int64_t>{4});
  EXPECT_EQ(sd.alphas, std::vector<double>{4.0});
  EXPECT_EQ(sd.targets, (std::vector<std::string>{"to_k", "to_out.0", "to_q", "to_v"}));
  EXPECT_EQ(sd.modules.at("unet"), 48);
  EXPECT_EQ(sd.num_tensors, 96);
  EXPECT_TRUE(sd.unknown_keys.empty());
  auto xl = lora::describe_lora_file(lora_dir("tiny-sdxl") / "pytorch_lora_weights_kohya.safetensors");
  std::cout << xl.to_string();
  EXPECT_EQ(xl.format, lora::LoRAFormat::kohya);
  EXPECT_EQ(xl.family, lora::ModelFamily::sdxl);
  EXPECT_EQ(xl.num_parameters,
            lora::load_lora_file(lora_dir("tiny-sdxl") / "peft_state_dict.safetensors").num_parameters());
  EXPECT_EQ(lora::describe_lora_file(lora_dir("tiny-sdxl") / "peft_state_dict.safetensors").format,
            lora::LoRAFormat::peft);

  auto dir = dltest::make_temp_dir("lora_describe");
  io::safetensors::save(
      dir / "odd.safetensors",
      std::map<std::string, torch::Tensor>{
          {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
           torch::zeros({2, 4})},
          {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
           torch::zeros({4, 2})},
          {"unet.some_adapter.weird.lora.down.weight", torch::zeros({2, 4})},
          {"not_lora_at_all", torch::zeros({1})}});
  auto odd = lora::describe_lora_file(dir / "odd.safetensors");
  std::cout << odd.to_string();
  EXPECT_EQ(odd.num_unknown_keys, 2);
  EXPECT_EQ(odd.unknown_keys,
            (std::vector<std::string>{"not_lora_at_all", "unet.some_adapter.weird.lora.down.weight"}));
  EXPECT_THROW(lora::load_lora_file(dir / "odd.safetensors"), Error);
}
