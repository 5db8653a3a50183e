// The built-in configs of the standard pipelines (runwayml/stable-diffusion-v1-5, stabilityai/
// stable-diffusion-2-1(-base), stabilityai/stable-diffusion-xl-base-1.0): their key numbers are pinned here
// so an edit cannot change them silently, they parse as the model configs, and a single file of a standard
// family loads without --model-config (given the tokenizer), naming --tokenizer when that is missing.
#include "dreamlora/convert/standard_configs.h"

#include <torch/torch.h>

#include <functional>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/pipeline/single_file.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"
#include "test_util.h"

using namespace dreamlora;
using convert::CheckpointFamily;
using dreamlora::testing::fixtures_dir;
namespace fs = std::filesystem;

namespace {

std::string error_text(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<int64_t> ints(const io::Json& j) {
  if (j.is_number()) return {j.get<int64_t>()};
  return j.get<std::vector<int64_t>>();
}

// A single file with the few tensors that decide the family and the standard shapes (the rest missing).
fs::path mini_single_file(const fs::path& dir, CheckpointFamily family) {
  io::safetensors::NamedTensors t = {
      {"model.diffusion_model.input_blocks.0.0.weight", torch::zeros({320, 4, 3, 3}, torch::kFloat16)},
      {"first_stage_model.encoder.conv_in.weight", torch::zeros({128, 3, 3, 3}, torch::kFloat16)}};
  if (family == CheckpointFamily::sd1)
    t.push_back({"cond_stage_model.transformer.text_model.final_layer_norm.weight", torch::zeros({768})});
  else
    t.push_back({"cond_stage_model.model.ln_final.weight", torch::zeros({1024})});
  const fs::path file = dir / (family == CheckpointFamily::sd1 ? "sd1.safetensors" : "sd2.safetensors");
  io::safetensors::save(file, t);
  return file;
}

}  // namespace

TEST(StandardConfigs, Sd15NumbersAreThoseOfTheRunwaymlConfigs) {
  auto c = convert::standard_configs(CheckpointFamily::sd1, false);
  EXPECT_EQ(c.repo, "runwayml/stable-diffusion-v1-5");
  EXPECT_EQ(ints(c.unet["block_out_channels"]), (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(ints(c.unet["attention_head_dim"]), (std::vector<int64_t>{8}));
  EXPECT_EQ(c.unet["cross_attention_dim"], 768);
  EXPECT_EQ(c.unet["sample_size"], 64);
  EXPECT_EQ(c.unet["layers_per_block"], 2);
  EXPECT_FALSE(c.unet.contains("use_linear_projection"));
  EXPECT_EQ(c.vae["sample_size"], 512);
  EXPECT_DOUBLE_EQ(c.vae["scaling_factor"].get<double>(), 0.18215);
  EXPECT_EQ(ints(c.vae["block_out_channels"]), (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_EQ(c.text_encoder["hidden_act"], "quick_gelu");
  EXPECT_EQ(c.text_encoder["hidden_size"], 768);
  EXPECT_EQ(c.text_encoder["num_hidden_layers"], 12);
  EXPECT_EQ(c.text_encoder["vocab_size"], 49408);
  EXPECT_EQ(c.scheduler["_class_name"], "PNDMScheduler");
  EXPECT_EQ(c.scheduler["prediction_type"], "epsilon");
  EXPECT_DOUBLE_EQ(c.scheduler["beta_start"].get<double>(), 0.00085);
  EXPECT_DOUBLE_EQ(c.scheduler["beta_end"].get<double>(), 0.012);
  EXPECT_EQ(c.scheduler["beta_schedule"], "scaled_linear");
  EXPECT_EQ(c.scheduler["steps_offset"], 1);
  EXPECT_EQ(c.tokenizer_pad, "<|endoftext|>");
  EXPECT_TRUE(c.text_encoder_2.is_null());
}

TEST(StandardConfigs, Sd21IsTheV768ModelAndSd21BaseTheEpsilon512One) {
  auto v = convert::standard_configs(CheckpointFamily::sd2, true);
  EXPECT_EQ(v.repo, "stabilityai/stable-diffusion-2-1");
  EXPECT_EQ(ints(v.unet["attention_head_dim"]), (std::vector<int64_t>{5, 10, 20, 20}));
  EXPECT_EQ(v.unet["cross_attention_dim"], 1024);
  EXPECT_EQ(v.unet["use_linear_projection"], true);
  EXPECT_EQ(v.unet["upcast_attention"], true);
  EXPECT_EQ(v.unet["sample_size"], 96);
  EXPECT_EQ(v.vae["sample_size"], 768);
  EXPECT_EQ(v.scheduler["_class_name"], "DDIMScheduler");
  EXPECT_EQ(v.scheduler["prediction_type"], "v_prediction");
  EXPECT_EQ(v.text_encoder["hidden_act"], "gelu");
  EXPECT_EQ(v.text_encoder["hidden_size"], 1024);
  EXPECT_EQ(v.text_encoder["intermediate_size"], 4096);
  EXPECT_EQ(v.text_encoder["num_attention_heads"], 16);
  EXPECT_EQ(v.text_encoder["num_hidden_layers"], 23);
  EXPECT_EQ(v.text_encoder["projection_dim"], 512);
  EXPECT_EQ(v.tokenizer_pad, "!");
  auto base = convert::standard_configs(CheckpointFamily::sd2, false);
  EXPECT_EQ(base.repo, "stabilityai/stable-diffusion-2-1-base");
  EXPECT_EQ(base.unet["upcast_attention"], false);
  EXPECT_EQ(base.unet["sample_size"], 64);
  EXPECT_EQ(base.vae["sample_size"], 512);
  EXPECT_EQ(base.scheduler["_class_name"], "PNDMScheduler");
  EXPECT_EQ(base.scheduler["prediction_type"], "epsilon");
}

TEST(StandardConfigs, SdxlBaseNumbersAreThoseOfTheStabilityaiConfigs) {
  auto c = convert::standard_configs(CheckpointFamily::sdxl, false);
  EXPECT_EQ(c.repo, "stabilityai/stable-diffusion-xl-base-1.0");
  EXPECT_EQ(ints(c.unet["block_out_channels"]), (std::vector<int64_t>{320, 640, 1280}));
  EXPECT_EQ(ints(c.unet["attention_head_dim"]), (std::vector<int64_t>{5, 10, 20}));
  EXPECT_EQ(ints(c.unet["transformer_layers_per_block"]), (std::vector<int64_t>{1, 2, 10}));
  EXPECT_EQ(c.unet["cross_attention_dim"], 2048);
  EXPECT_EQ(c.unet["addition_embed_type"], "text_time");
  EXPECT_EQ(c.unet["addition_time_embed_dim"], 256);
  EXPECT_EQ(c.unet["projection_class_embeddings_input_dim"], 2816);
  EXPECT_EQ(c.unet["sample_size"], 128);
  EXPECT_EQ(c.unet["down_block_types"][0], "DownBlock2D");
  EXPECT_DOUBLE_EQ(c.vae["scaling_factor"].get<double>(), 0.13025);
  EXPECT_EQ(c.vae["sample_size"], 1024);
  EXPECT_EQ(c.vae["force_upcast"], true);
  EXPECT_EQ(c.text_encoder["hidden_size"], 768);
  EXPECT_EQ(c.text_encoder_2["architectures"][0], "CLIPTextModelWithProjection");
  EXPECT_EQ(c.text_encoder_2["hidden_act"], "gelu");
  EXPECT_EQ(c.text_encoder_2["hidden_size"], 1280);
  EXPECT_EQ(c.text_encoder_2["intermediate_size"], 5120);
  EXPECT_EQ(c.text_encoder_2["num_attention_heads"], 20);
  EXPECT_EQ(c.text_encoder_2["num_hidden_layers"], 32);
  EXPECT_EQ(c.text_encoder_2["projection_dim"], 1280);
  EXPECT_EQ(c.scheduler["_class_name"], "EulerDiscreteScheduler");
  EXPECT_EQ(c.scheduler["timestep_spacing"], "leading");
  EXPECT_EQ(c.scheduler["prediction_type"], "epsilon");
  EXPECT_EQ(c.model_index["_class_name"], "StableDiffusionXLPipeline");
  EXPECT_EQ(c.model_index["force_zeros_for_empty_prompt"], true);
  EXPECT_EQ(c.tokenizer_pad, "<|endoftext|>");
  EXPECT_EQ(c.tokenizer_2_pad, "!");
}

TEST(StandardConfigs, EveryConfigParsesAsTheModelConfigs) {
  for (auto family : {CheckpointFamily::sd1, CheckpointFamily::sd2, CheckpointFamily::sdxl})
    for (bool v : {false, true}) {
      auto c = convert::standard_configs(family, v);
      SCOPED_TRACE(c.repo);
      auto unet = unet::UNet2DConditionConfig::from_json(c.unet, "unet");
      EXPECT_EQ(unet.cross_attention_dim.front(), c.unet["cross_attention_dim"].get<int64_t>());
      auto vae = vae::AutoencoderKLConfig::from_json(c.vae, "vae");
      EXPECT_DOUBLE_EQ(vae.scaling_factor, c.vae["scaling_factor"].get<double>());
      auto te = text::CLIPTextConfig::from_json(c.text_encoder, "text_encoder");
      EXPECT_FALSE(te.with_projection());
      if (family == CheckpointFamily::sdxl)
        EXPECT_TRUE(text::CLIPTextConfig::from_json(c.text_encoder_2, "text_encoder_2").with_projection());
    }
}

TEST(SingleFileWithoutModelConfig, UsesTheStandardConfigsAndAsksForTheTokenizer) {
  auto dir = dreamlora::testing::make_temp_dir("standard-configs");
  const auto file = mini_single_file(dir, CheckpointFamily::sd1);
  auto c = pipeline::SingleFileCheckpoint::open(file, pipeline::SingleFileOptions{});
  EXPECT_NE(c.config_source().find("runwayml/stable-diffusion-v1-5"), std::string::npos);
  auto msg = error_text([&] { pipeline::ModelBundle::load(file, {}); });
  EXPECT_NE(msg.find("--tokenizer DIR"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--model-config DIR"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(SingleFileWithoutModelConfig, Sd2IsV768UnlessThePredictionTypeSaysEpsilon) {
  auto dir = dreamlora::testing::make_temp_dir("standard-configs-sd2");
  const auto file = mini_single_file(dir, CheckpointFamily::sd2);
  auto v = pipeline::SingleFileCheckpoint::open(file, pipeline::SingleFileOptions{});
  EXPECT_NE(v.config_source().find("stable-diffusion-2-1 "), std::string::npos) << v.config_source();
  auto eps = pipeline::SingleFileCheckpoint::open(file, pipeline::SingleFileOptions{"", "", "epsilon"});
  EXPECT_NE(eps.config_source().find("stable-diffusion-2-1-base"), std::string::npos) << eps.config_source();
  fs::remove_all(dir);
}

TEST(SingleFileWithoutModelConfig, AnotherArchitectureOfTheFamilyNamesTheShapeAndModelConfig) {
  REQUIRE_FIXTURES();
  auto msg = error_text([] {
    pipeline::SingleFileCheckpoint::open(fixtures_dir() / "tiny-sd" / "single-file.safetensors",
                                         pipeline::SingleFileOptions{});
  });
  EXPECT_NE(msg.find("SD1.x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("runwayml/stable-diffusion-v1-5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--model-config"), std::string::npos) << msg;
}

TEST(SingleFileWithoutModelConfig, TheTokenizerFlagTakesTheBpeFilesOrADownloadFolder) {
  REQUIRE_FIXTURES();
  auto dir = dreamlora::testing::make_temp_dir("standard-configs-tokenizer");
  const auto file = mini_single_file(dir, CheckpointFamily::sd1);
  for (const fs::path& tokenizer : {fixtures_dir() / "tiny-sd" / "tokenizer", fixtures_dir() / "tiny-sd"}) {
    pipeline::LoadOptions load;
    load.tokenizer = tokenizer;
    // Past the tokenizer: the mini file has no text encoder weights, and that is what the error says.
    auto msg = error_text([&] { pipeline::ModelBundle::load(file, load); });
    EXPECT_EQ(msg.find("--tokenizer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("text_encoder"), std::string::npos) << msg;
  }
  fs::remove_all(dir);
}
