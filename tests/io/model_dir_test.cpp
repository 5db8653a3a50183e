// diffusers pipeline folders: components, weight-file discovery (variants, shards), pickle refusal.
#include "dreamlora/io/model_dir.h"

#include <torch/torch.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::io;
using dreamlora::testing::error_of;
using dreamlora::testing::fixtures_dir;
using dreamlora::testing::make_temp_dir;

namespace {
void touch(const std::filesystem::path& p, const std::string& text = "x") {
  std::ofstream(p) << text;
}
}  // namespace

TEST(ModelDir, ListsTheFixturePipelineComponents) {
  REQUIRE_FIXTURES();
  auto sd = ModelDir::open(fixtures_dir() / "tiny-sd");
  EXPECT_EQ(sd.pipeline_class(), "StableDiffusionPipeline");
  EXPECT_EQ(sd.component("unet").class_name, "UNet2DConditionModel");
  EXPECT_FALSE(sd.has_component("safety_checker"));
  EXPECT_FALSE(sd.is_sdxl());
  auto xl = ModelDir::open(fixtures_dir() / "tiny-sdxl");
  EXPECT_TRUE(xl.is_sdxl());
  EXPECT_EQ(xl.component("text_encoder_2").class_name, "CLIPTextModelWithProjection");
  auto w = load_component_weights(xl.component_dir("vae"));
  EXPECT_GT(w.size(), 10u);
}

TEST(ModelDir, MissingModelIndexIsNamed) {
  auto dir = make_temp_dir("md");
  EXPECT_NE(error_of([&] { ModelDir::open(dir); }).find("model_index.json"), std::string::npos);
}

TEST(ModelDir, RefusesPickleWeightsWithAConversionHint) {
  auto dir = make_temp_dir("md-pickle");
  touch(dir / "diffusion_pytorch_model.bin");
  auto msg = error_of([&] { find_weight_files(dir); });
  EXPECT_NE(msg.find("diffusion_pytorch_model.bin"), std::string::npos);
  EXPECT_NE(msg.find("safetensors"), std::string::npos);
  EXPECT_NE(error_of([&] { refuse_pickle("model.ckpt"); }).find("pickle"), std::string::npos);
}

TEST(ModelDir, FindsVariantAndShardedWeights) {
  auto dir = make_temp_dir("md-variant");
  safetensors::save(dir / "diffusion_pytorch_model.safetensors",
                    safetensors::NamedTensors{{"a", torch::ones({1})}});
  safetensors::save(dir / "diffusion_pytorch_model.fp16.safetensors",
                    safetensors::NamedTensors{{"a", torch::ones({1}).to(torch::kFloat16)}});
  EXPECT_EQ(find_weight_files(dir, "fp16").at(0).filename(), "diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(find_weight_files(dir).at(0).filename(), "diffusion_pytorch_model.safetensors");
  EXPECT_NE(error_of([&] { find_weight_files(dir, "bf16"); }).find("variant 'bf16'"), std::string::npos);

  auto sharded = make_temp_dir("md-shards");
  safetensors::save(sharded / "model-00001-of-00002.safetensors",
                    safetensors::NamedTensors{{"a", torch::ones({1})}});
  safetensors::save(sharded / "model-00002-of-00002.safetensors",
                    safetensors::NamedTensors{{"b", torch::zeros({2})}});
  touch(
      sharded / "model.safetensors.index.json",
      R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  auto weights = load_component_weights(sharded);
  EXPECT_EQ(weights.size(), 2u);
  EXPECT_EQ(weights.at("b").sizes(), (std::vector<int64_t>{2}));
}
