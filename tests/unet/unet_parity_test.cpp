// UNet2DConditionModel against diffusers 0.27.2: end outputs (reference.safetensors) for tiny-sd and
// tiny-sdxl, and module-level checks against intermediates.safetensors to localise a departure.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "test_util.h"

namespace dreamlora::unet {
namespace {

using dreamlora::testing::fixtures_dir;

struct Fixture {
  UNet2DConditionModel unet{nullptr};
  std::map<std::string, torch::Tensor> ref, inter;
};

Fixture load_fixture(const std::string& name) {
  Fixture f;
  const auto dir = fixtures_dir() / name;
  f.unet = UNet2DConditionModelImpl::load(dir / "unet");
  f.ref = io::safetensors::File::open(dir / "reference.safetensors").load_all();
  f.inter = io::safetensors::File::open(dir / "intermediates.safetensors").load_all();
  return f;
}

torch::Tensor run_reference_inputs(Fixture& f, bool sdxl) {
  torch::NoGradGuard no_grad;
  return f.unet->forward(f.ref.at("unet.sample"), f.ref.at("unet.timesteps"),
                         f.ref.at("unet.encoder_hidden_states"),
                         sdxl ? f.ref.at("unet.added_cond.text_embeds") : torch::Tensor(),
                         sdxl ? f.ref.at("unet.added_cond.time_ids") : torch::Tensor());
}

TEST(UNetParity, TinySdOutputMatchesDiffusers) {
  REQUIRE_FIXTURES();
  auto f = load_fixture("tiny-sd");
  EXPECT_TENSOR_NEAR(run_reference_inputs(f, false), f.ref.at("unet.out"), 1e-5);
}

TEST(UNetParity, TinySdxlOutputWithTextTimeConditioningMatchesDiffusers) {
  REQUIRE_FIXTURES();
  auto f = load_fixture("tiny-sdxl");
  EXPECT_TENSOR_NEAR(run_reference_inputs(f, true), f.ref.at("unet.out"), 1e-5);
}

TEST(UNetParity, TimeEmbeddingsMatchIntermediates) {
  REQUIRE_FIXTURES();
  auto f = load_fixture("tiny-sdxl");
  torch::NoGradGuard no_grad;
  // sin/cos of arguments up to ~1000 rad: libtorch 2.x's vectorised sin/cos differ from 1.13's (which
  // made the reference) by up to 1.7e-6 (measured on 2.13 CPU), well inside the fixtures' 1e-5 aim.
  constexpr double kSinusoidTolerance = 5e-6;
  auto t_emb = f.unet->time_proj(f.ref.at("unet.timesteps"));
  EXPECT_TENSOR_NEAR(t_emb, f.inter.at("unet.time_proj"), kSinusoidTolerance);
  EXPECT_TENSOR_NEAR(f.unet->time_embedding(t_emb), f.inter.at("unet.time_embedding"), 1e-5);
  auto add = f.unet->add_time_proj(f.ref.at("unet.added_cond.time_ids").flatten());
  EXPECT_TENSOR_NEAR(add, f.inter.at("unet.add_time_proj"), kSinusoidTolerance);
}

// Each block fed with diffusers' own input, so a failure points at one block.
TEST(UNetParity, TinySdBlocksMatchIntermediatesOneByOne) {
  REQUIRE_FIXTURES();
  auto f = load_fixture("tiny-sd");
  torch::NoGradGuard no_grad;
  const auto& in = f.inter;
  const auto temb = in.at("unet.time_embedding");
  const auto context = f.ref.at("unet.encoder_hidden_states");
  EXPECT_TENSOR_NEAR(f.unet->conv_in(f.ref.at("unet.sample")), in.at("unet.conv_in"), 1e-5);

  auto attn = f.unet->down[0]->as<CrossAttnDownBlock2DImpl>()->layers.attentions[0];
  EXPECT_TENSOR_NEAR(attn->norm(in.at("unet.down_blocks.0.resnets.0")),
                     in.at("unet.down_blocks.0.attentions.0.norm"), 1e-5);
  auto block = attn->blocks[0];
  const auto x =
      in.at("unet.down_blocks.0.attentions.0.proj_in").permute({0, 2, 3, 1}).reshape({2, 1024, 32});
  EXPECT_TENSOR_NEAR(block->attn1(block->norm1(x)),
                     in.at("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"), 1e-5);
  EXPECT_TENSOR_NEAR(block(x, context), in.at("unet.down_blocks.0.attentions.0.transformer_blocks.0"), 1e-5);
  EXPECT_TENSOR_NEAR(attn(in.at("unet.down_blocks.0.resnets.0"), context),
                     in.at("unet.down_blocks.0.attentions.0"), 1e-5);

  auto [down0, skips0] = f.unet->down[0]->forward(in.at("unet.conv_in"), temb, context);
  EXPECT_EQ(skips0.size(), 3u);
  EXPECT_TENSOR_NEAR(down0, in.at("unet.down_blocks.0"), 1e-5);
  auto [down1, skips1] = f.unet->down[1]->forward(in.at("unet.down_blocks.0"), temb, context);
  EXPECT_EQ(skips1.size(), 2u);  // last block: no downsampler
  EXPECT_TENSOR_NEAR(down1, in.at("unet.down_blocks.1"), 1e-5);
  EXPECT_TENSOR_NEAR(f.unet->mid_block(in.at("unet.down_blocks.1"), temb, context), in.at("unet.mid_block"),
                     1e-5);
  const auto norm_out = f.unet->conv_norm_out(in.at("unet.up_blocks.1"));
  EXPECT_TENSOR_NEAR(norm_out, in.at("unet.conv_norm_out"), 1e-5);
  EXPECT_TENSOR_NEAR(f.unet->conv_out(torch::silu(norm_out)), in.at("unet.conv_out"), 1e-5);
}

TEST(UNetParity, HeadsComeFromAttentionHeadDim) {
  REQUIRE_FIXTURES();
  // tiny-sd: attention_head_dim 8 means 8 heads of 32/8 = 4 channels (the diffusers naming trap).
  auto unet = UNet2DConditionModelImpl::load(fixtures_dir() / "tiny-sd" / "unet");
  auto attn1 = unet->down[0]->as<CrossAttnDownBlock2DImpl>()->layers.attentions[0]->blocks[0]->attn1;
  EXPECT_EQ(attn1->options.heads, 8);
  EXPECT_EQ(attn1->options.dim_head, 4);
  // tiny-sdxl: attention_head_dim [2, 4]: block 1 (64 channels) has 4 heads of 16.
  auto xl = UNet2DConditionModelImpl::load(fixtures_dir() / "tiny-sdxl" / "unet");
  auto xattn = xl->down[1]->as<CrossAttnDownBlock2DImpl>()->layers.attentions[0]->blocks[0]->attn2;
  EXPECT_EQ(xattn->options.heads, 4);
  EXPECT_EQ(xattn->options.dim_head, 16);
  EXPECT_EQ(xl->mid_block->layers.attentions[0]->blocks.size(), 2u);  // transformer_layers_per_block[-1]
}

}  // namespace
}  // namespace dreamlora::unet
