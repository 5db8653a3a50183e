// AutoencoderKL against diffusers' fixtures (tiny-sd, tiny-sdxl): posterior mean/logvar, a posterior
// sample from the stored eps, scaled training latents and the decoded image; plus config parsing,
// slicing, tiling and loading behaviour.
#include "dreamlora/vae/autoencoder_kl.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "dreamlora/blocks/attention_processor.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/state_dict.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::vae;

namespace {

class VaeParity : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeParity, EncodeSampleScaleAndDecodeMatchDiffusers) {
  REQUIRE_FIXTURES();
  torch::NoGradGuard no_grad;
  const auto dir = dreamlora::testing::fixtures_dir() / GetParam();
  auto ref = io::safetensors::File::open(dir / "reference.safetensors");
  auto vae = AutoencoderKLImpl::load(dir / "vae");

  auto posterior = vae->encode(ref.get("vae.image"));
  EXPECT_TENSOR_NEAR(posterior.mean, ref.get("vae.latent_mean"), 1e-5);
  EXPECT_TENSOR_NEAR(posterior.logvar, ref.get("vae.latent_logvar"), 1e-5);
  EXPECT_TENSOR_NEAR(posterior.std, ref.get("vae.latent_std"), 1e-5);
  auto sample = posterior.sample_with(ref.get("vae.sample_eps"));
  EXPECT_TENSOR_NEAR(sample, ref.get("vae.latent_sample"), 1e-5);
  EXPECT_TENSOR_NEAR(vae->scale_latents(sample), ref.get("vae.latent_scaled"), 1e-5);
  EXPECT_TENSOR_NEAR(vae->decode(ref.get("vae.latent_mean")), ref.get("vae.decoded"), 1e-5);
}

TEST_P(VaeParity, ConfigMatchesTheFixture) {
  REQUIRE_FIXTURES();
  auto c =
      AutoencoderKLConfig::from_file(dreamlora::testing::fixtures_dir() / GetParam() / "vae" / "config.json");
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(c.scale_factor(), 2);
  EXPECT_TRUE(c.force_upcast);
  EXPECT_FALSE(c.shift_factor.has_value());
  EXPECT_DOUBLE_EQ(c.scaling_factor, GetParam() == "tiny-sd" ? 0.18215 : 0.13025);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VaeParity, ::testing::Values("tiny-sd", "tiny-sdxl"),
                         [](const auto& info) { return info.param == "tiny-sd" ? "sd" : "sdxl"; });

AutoencoderKLConfig small_config() {
  return AutoencoderKLConfig::from_json({{"block_out_channels", {32, 64}},
                                         {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                                         {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
                                         {"sample_size", 32}},
                                        "test");
}

TEST(AutoencoderKL, ParameterNamesAreDiffusersKeys) {
  AutoencoderKL vae(small_config());
  auto names = nn::named_tensors(*vae);
  for (const char* key :
       {"encoder.conv_in.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.attentions.0.group_norm.weight", "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid_block.attentions.0.to_out.0.bias", "encoder.mid_block.resnets.1.norm2.bias",
        "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up_blocks.1.resnets.1.conv2.weight",
        "decoder.conv_norm_out.weight", "quant_conv.weight", "post_quant_conv.bias"}) {
    EXPECT_EQ(names.count(key), 1u) << key;
  }
  EXPECT_EQ(names.count("decoder.up_blocks.1.upsamplers.0.conv.weight"), 0u);  // last block: no upsampler
}

TEST(AutoencoderKL, SlicingGivesTheSameResultAsOneBatch) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  AutoencoderKL vae(small_config());
  vae->eval();
  auto image = torch::rand({2, 3, 16, 16}) * 2 - 1;
  auto whole = vae->encode(image).mean;
  auto dec_whole = vae->decode(whole);
  vae->enable_slicing();
  // Equal up to the convolution kernels' batch-size-dependent summation order.
  EXPECT_TENSOR_NEAR(vae->encode(image).mean, whole, 1e-5);
  EXPECT_TENSOR_NEAR(vae->decode(whole), dec_whole, 1e-5);
}

TEST(AutoencoderKL, TilingStitchesTilesLikeDiffusers) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  AutoencoderKL vae(small_config());
  vae->eval();
  auto z = torch::randn({1, 4, 14, 14});
  auto plain = vae->decode(z);
  vae->enable_tiling();
  // Inputs no larger than a tile (sample_size 32 px = 16 latents) skip tiling.
  EXPECT_TRUE(torch::equal(vae->decode(z), plain));

  // 16 px tiles = 8 latents, stride int(8 * 0.75) = 6, blend int(16 * 0.25) = 4 px, kept 12 px per tile:
  // 3 x 3 tiles, 12 + 12 + 4 = 28 px.
  vae->set_tile_sample_min_size(16);
  auto tiled = vae->decode(z);
  ASSERT_EQ(tiled.sizes(), plain.sizes());
  EXPECT_TRUE(torch::isfinite(tiled).all().item<bool>());
  // The first tile is never blended: its kept 12 x 12 corner is that tile decoded on its own.
  auto first = vae->decoder(vae->post_quant_conv(z.slice(2, 0, 8).slice(3, 0, 8)));
  EXPECT_TRUE(torch::allclose(tiled.slice(2, 0, 12).slice(3, 0, 12), first.slice(2, 0, 12).slice(3, 0, 12)));
  // Past the seam the output cross-fades into the next tile.
  EXPECT_FALSE(
      torch::allclose(tiled.slice(2, 0, 12).slice(3, 12, 16), first.slice(2, 0, 12).slice(3, 12, 16)));

  // Tiled encode of 28 px: tiles of 16 px, stride 12, blend 2 latents, kept 6: 6 + 6 + 2 = 14 latents.
  auto moments = vae->encode(plain).mean;
  ASSERT_EQ(moments.sizes(), (std::vector<int64_t>{1, 4, 14, 14}));
}

TEST(AutoencoderKL, ScaleLatentsAppliesShiftThenScaleAndInverts) {
  auto c = small_config();
  c.shift_factor = 0.0609;
  c.scaling_factor = 1.5305;
  AutoencoderKL vae(c);
  auto z = torch::randn({1, 4, 3, 3});
  auto scaled = vae->scale_latents(z);
  EXPECT_TRUE(torch::allclose(scaled, (z - 0.0609) * 1.5305));
  EXPECT_TRUE(torch::allclose(vae->unscale_latents(scaled), z, 1e-5, 1e-6));
}

TEST(DiagonalGaussian, LogvarIsClampedAndSamplingUsesTheGenerator) {
  auto moments = torch::cat({torch::zeros({1, 4, 2, 2}), torch::full({1, 4, 2, 2}, 50.0)}, 1);
  DiagonalGaussianDistribution d(moments);
  EXPECT_EQ(d.logvar.max().item<float>(), 20.0f);
  auto g1 = at::detail::createCPUGenerator(7), g2 = at::detail::createCPUGenerator(7);
  EXPECT_TRUE(torch::equal(d.sample(g1), d.sample(g2)));
  auto eps = torch::randn({1, 4, 2, 2});
  EXPECT_TRUE(torch::allclose(d.sample_with(eps), d.mean + d.std * eps));
  EXPECT_THROW(d.sample_with(torch::zeros({1, 4, 3, 3})), dreamlora::Error);
}

TEST(AutoencoderKLConfig, UnsupportedBlockTypeNamesTheKey) {
  try {
    AutoencoderKLConfig::from_json({{"down_block_types", {"AttnDownEncoderBlock2D"}}}, "x/vae/config.json");
    FAIL() << "expected an error";
  } catch (const dreamlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("down_block_types"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("x/vae/config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(AutoencoderKLConfig::from_json({{"act_fn", "gelu"}}), dreamlora::Error);
}

TEST(AutoencoderKLConfig, ToJsonRoundTrips) {
  auto c = small_config();
  c.shift_factor = 0.1;
  auto back = AutoencoderKLConfig::from_json(c.to_json());
  EXPECT_EQ(back.block_out_channels, c.block_out_channels);
  EXPECT_EQ(back.down_block_types, c.down_block_types);
  EXPECT_EQ(back.sample_size, 32);
  ASSERT_TRUE(back.shift_factor.has_value());
  EXPECT_DOUBLE_EQ(*back.shift_factor, 0.1);
}

TEST(AutoencoderKL, LoadsDeprecatedAttentionKeysAndUpcastsFp16) {
  REQUIRE_FIXTURES();
  // Rewrite the fixture VAE with pre-0.14 attention names (query/key/value/proj_attn).
  const auto src = dreamlora::testing::fixtures_dir() / "tiny-sd" / "vae";
  const auto dir = dreamlora::testing::make_temp_dir("vae-old-keys");
  std::filesystem::copy_file(src / "config.json", dir / "config.json");
  auto file = io::safetensors::File::open(src / "diffusion_pytorch_model.safetensors");
  std::map<std::string, torch::Tensor> renamed;
  for (const auto& name : file.names()) {
    std::string key = name;
    for (auto [from, to] : {std::pair{".to_q.", ".query."},
                            {".to_k.", ".key."},
                            {".to_v.", ".value."},
                            {".to_out.0.", ".proj_attn."}}) {
      auto pos = key.find(from);
      if (pos != std::string::npos) key.replace(pos, std::string(from).size(), to);
    }
    renamed[key] = file.get(name).clone();
  }
  io::safetensors::save(dir / "diffusion_pytorch_model.safetensors", renamed);
  auto vae = AutoencoderKLImpl::load(dir, "", torch::kFloat16);
  EXPECT_EQ(vae->dtype(), torch::kFloat32);  // force_upcast keeps this VAE in float32
  auto original = AutoencoderKLImpl::load(src);
  EXPECT_TRUE(
      torch::equal(vae->encoder->mid_block->attentions[0]->as<blocks::AttentionImpl>()->to_q->weight,
                   original->encoder->mid_block->attentions[0]->as<blocks::AttentionImpl>()->to_q->weight));
  std::filesystem::remove_all(dir);
}

}  // namespace
