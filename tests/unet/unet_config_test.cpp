// UNet2DConditionConfig parsing (diffusers defaults, per-block broadcast, errors naming the key),
// to_json round trip, and strict weight loading.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "test_util.h"

namespace dreamlora::unet {
namespace {

using dreamlora::testing::fixtures_dir;

io::Json tiny_sd_json() {
  return io::Json::parse(R"({"_class_name": "UNet2DConditionModel", "attention_head_dim": 8,
    "block_out_channels": [32, 64], "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2, "sample_size": 32})");
}

// The error message of from_json(json), or "" when it parses.
std::string parse_error(const io::Json& json) {
  try {
    UNet2DConditionConfig::from_json(json, "test/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(UNetConfig, DefaultsAndBroadcastFollowDiffusers) {
  auto c = UNet2DConditionConfig::from_json(tiny_sd_json());
  EXPECT_EQ(c.attention_head_dim, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(c.cross_attention_dim, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(c.layers_per_block, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(c.transformer_layers_per_block, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(c.only_cross_attention, (std::vector<bool>{false, false}));
  EXPECT_EQ(c.in_channels, 4);
  EXPECT_TRUE(c.flip_sin_to_cos);
  EXPECT_EQ(c.norm_num_groups, 32);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_FALSE(c.has_text_time());
  EXPECT_EQ(c.time_embed_dim(), 128);
}

TEST(UNetConfig, UnsupportedValuesAreErrorsNamingTheKey) {
  const std::vector<std::pair<std::string, io::Json>> cases = {
      {"class_embed_type", "timestep"},
      {"time_cond_proj_dim", 256},
      {"encoder_hid_dim", 768},
      {"encoder_hid_dim_type", "text_proj"},
      {"attention_type", "gated"},
      {"resnet_time_scale_shift", "scale_shift"},
      {"dual_cross_attention", true},
      {"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"},
      {"conv_in_kernel", 7},
      {"conv_out_kernel", 1},
      {"num_attention_heads", 8},
      {"addition_embed_type", "text"},
      {"time_embedding_type", "fourier"},
      {"num_class_embeds", 10},
      {"act_fn", "gelu"},
      {"cross_attention_norm", "group_norm"},
      {"timestep_post_act", "silu"},
      {"time_embedding_dim", 512},
      {"class_embeddings_concat", true},
      {"reverse_transformer_layers_per_block", io::Json::array({1, 1})},
      {"mid_block_type", nullptr},
      {"_class_name", "UNet2DModel"},
  };
  for (const auto& [key, value] : cases) {
    auto json = tiny_sd_json();
    json[key] = value;
    const auto message = parse_error(json);
    EXPECT_NE(message.find("'" + key + "'"), std::string::npos) << key << ": " << message;
    EXPECT_NE(message.find("test/config.json"), std::string::npos) << message;
  }
}

TEST(UNetConfig, BadBlockListsAreErrorsNamingTheKey) {
  auto json = tiny_sd_json();
  json["down_block_types"] = {"CrossAttnDownBlock2D", "AttnDownBlock2D"};
  EXPECT_NE(parse_error(json).find("down_block_types[1]"), std::string::npos) << parse_error(json);
  json = tiny_sd_json();
  json["attention_head_dim"] = {8, 8, 8};
  EXPECT_NE(parse_error(json).find("'attention_head_dim'"), std::string::npos) << parse_error(json);
  json = tiny_sd_json();
  json["attention_head_dim"] = 5;  // 32 channels cannot split into 5 heads
  EXPECT_NE(parse_error(json).find("attention_head_dim"), std::string::npos) << parse_error(json);
  json = tiny_sd_json();
  json["addition_embed_type"] = "text_time";  // without its dims
  EXPECT_NE(parse_error(json).find("addition_time_embed_dim"), std::string::npos) << parse_error(json);
}

TEST(UNetConfig, ToJsonReproducesTheDiffusersConfigFiles) {
  REQUIRE_FIXTURES();
  for (const char* name : {"tiny-sd", "tiny-sdxl"}) {
    const auto path = fixtures_dir() / name / "unet" / "config.json";
    const io::Json original = io::read_json(path);
    const io::Json written = UNet2DConditionConfig::from_file(path).to_json();
    for (const auto& [key, value] : original.items()) {
      if (key == "_diffusers_version") continue;
      ASSERT_TRUE(written.contains(key)) << name << ": " << key;
      EXPECT_EQ(written[key], value) << name << ": " << key;
    }
    // And it parses back to the same network.
    EXPECT_EQ(UNet2DConditionConfig::from_json(written).to_json(), written);
  }
}

TEST(UNetLoading, MissingAndUnexpectedKeysAreListed) {
  REQUIRE_FIXTURES();
  const auto src = fixtures_dir() / "tiny-sd" / "unet";
  auto weights = io::safetensors::File::open(src / "diffusion_pytorch_model.safetensors").load_all();
  weights.erase("mid_block.attentions.0.proj_in.weight");
  weights["mid_block.attentions.0.bogus.weight"] = torch::zeros({1});
  const auto dir = dreamlora::testing::make_temp_dir("unet_strict");
  std::filesystem::copy_file(src / "config.json", dir / "config.json");
  io::safetensors::save(dir / "diffusion_pytorch_model.safetensors", weights);
  std::string message;
  try {
    UNet2DConditionModelImpl::load(dir);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("mid_block.attentions.0.proj_in.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("mid_block.attentions.0.bogus.weight"), std::string::npos) << message;
  std::filesystem::remove_all(dir);
}

TEST(UNetLoading, ModuleTreeHasExactlyTheDiffusersKeys) {
  REQUIRE_FIXTURES();
  for (const char* name : {"tiny-sd", "tiny-sdxl"}) {
    const auto dir = fixtures_dir() / name / "unet";
    const auto file = io::safetensors::File::open(dir / "diffusion_pytorch_model.safetensors");
    UNet2DConditionModel unet(UNet2DConditionConfig::from_file(dir / "config.json"));
    std::vector<std::string> ours;
    for (const auto& item : unet->named_parameters()) ours.push_back(item.key());
    auto theirs = file.names();
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    EXPECT_EQ(ours, theirs) << name;
  }
}

TEST(UNetLoading, LoadsInBfloat16) {
  REQUIRE_FIXTURES();
  auto unet = UNet2DConditionModelImpl::load(fixtures_dir() / "tiny-sd" / "unet", "", torch::kBFloat16);
  EXPECT_EQ(unet->dtype(), torch::kBFloat16);
  for (const auto& p : unet->parameters()) EXPECT_FALSE(p.requires_grad());
  torch::NoGradGuard no_grad;
  auto out = unet->forward(torch::randn({1, 4, 8, 8}), torch::tensor({10}), torch::randn({1, 7, 32}));
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 8, 8}));
}

TEST(UNetForward, OddLatentSizesUpsampleToTheSkipSize) {
  torch::manual_seed(0);
  auto c = UNet2DConditionConfig::from_json(tiny_sd_json());
  UNet2DConditionModel unet(c);
  torch::NoGradGuard no_grad;
  auto out = unet->forward(torch::randn({1, 4, 9, 7}), torch::tensor(5.5), torch::randn({1, 3, 32}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 9, 7}));
}

}  // namespace
}  // namespace dreamlora::unet
