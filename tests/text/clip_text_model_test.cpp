// CLIP text encoders and encode_prompt against transformers/diffusers outputs in the tiny-sd and
// tiny-sdxl fixtures, plus config handling and gradient flow into a text-encoder LoRA.
#include "dreamlora/text/clip_text_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/text/text_embeddings.h"
#include "test_util.h"

namespace dreamlora::text {
namespace {

using testing::fixtures_dir;

constexpr double kTol = 1e-5;
const std::vector<std::string> kPrompts = {"a photo of sks dog",
                                           "A painting of a squirrel eating a burger, highly detailed!"};
const std::vector<std::string> kNegative = {"", "blurry"};

torch::Tensor ref(const std::string& set, const std::string& name) {
  return io::safetensors::File::open(fixtures_dir() / set / "reference.safetensors").get(name);
}
torch::Tensor intermediate(const std::string& set, const std::string& name) {
  return io::safetensors::File::open(fixtures_dir() / set / "intermediates.safetensors").get(name);
}

std::shared_ptr<const CLIPTokenizer> tokenizer(const std::string& set, const std::string& name) {
  return std::make_shared<const CLIPTokenizer>(CLIPTokenizer::load(fixtures_dir() / set / name));
}

TEST(CLIPTextModel, TinySdEncoderMatchesTransformers) {
  REQUIRE_FIXTURES();
  auto ids = ref("tiny-sd", "prompts.input_ids");
  EXPECT_TRUE(torch::equal(tokenizer("tiny-sd", "tokenizer")->encode_batch(kPrompts), ids));
  auto te = load_clip_text_model(fixtures_dir() / "tiny-sd" / "text_encoder");
  EXPECT_FALSE(te->config.with_projection());
  torch::NoGradGuard no_grad;
  auto out = te->forward(ids, /*output_hidden_states=*/true);
  ASSERT_EQ(out.hidden_states.size(), 6u);  // embeddings + 5 layers
  EXPECT_FALSE(out.text_embeds.defined());
  EXPECT_TENSOR_NEAR(out.hidden_states[0], ref("tiny-sd", "text_encoder.embeddings"), kTol);
  EXPECT_TENSOR_NEAR(out.hidden_states[1],
                     intermediate("tiny-sd", "text_encoder.text_model.encoder.layers.0"), kTol);
  EXPECT_TENSOR_NEAR(out.hidden_states[4], ref("tiny-sd", "text_encoder.hidden_states_penultimate"), kTol);
  EXPECT_TENSOR_NEAR(out.last_hidden_state, ref("tiny-sd", "text_encoder.last_hidden_state"), kTol);
  EXPECT_TENSOR_NEAR(out.pooler_output, ref("tiny-sd", "text_encoder.pooler_output"), kTol);
}

TEST(CLIPTextModel, TinySdxlBothEncodersMatchTransformers) {
  REQUIRE_FIXTURES();
  const std::string set = "tiny-sdxl";
  auto ids = ref(set, "prompts.input_ids");
  auto ids_2 = ref(set, "prompts.input_ids_2");
  EXPECT_TRUE(torch::equal(tokenizer(set, "tokenizer")->encode_batch(kPrompts), ids));
  EXPECT_TRUE(torch::equal(tokenizer(set, "tokenizer_2")->encode_batch(kPrompts), ids_2));
  torch::NoGradGuard no_grad;

  auto te1 = load_clip_text_model(fixtures_dir() / set / "text_encoder");
  auto out1 = te1->forward(ids, true);
  EXPECT_TENSOR_NEAR(out1.hidden_states[0], ref(set, "text_encoder.embeddings"), kTol);
  EXPECT_TENSOR_NEAR(out1.hidden_states[out1.hidden_states.size() - 2],
                     ref(set, "text_encoder.hidden_states_penultimate"), kTol);
  EXPECT_TENSOR_NEAR(out1.last_hidden_state, ref(set, "text_encoder.last_hidden_state"), kTol);
  EXPECT_TENSOR_NEAR(out1.pooler_output, ref(set, "text_encoder.pooler_output"), kTol);

  auto te2 = load_clip_text_model(fixtures_dir() / set / "text_encoder_2");
  ASSERT_TRUE(te2->config.with_projection());
  EXPECT_EQ(te2->config.hidden_act, "gelu");
  auto out2 = te2->forward(ids_2, true);
  EXPECT_TENSOR_NEAR(out2.hidden_states[1], intermediate(set, "text_encoder_2.text_model.encoder.layers.0"),
                     kTol);
  EXPECT_TENSOR_NEAR(out2.hidden_states[out2.hidden_states.size() - 2],
                     ref(set, "text_encoder_2.hidden_states_penultimate"), kTol);
  EXPECT_TENSOR_NEAR(out2.last_hidden_state, ref(set, "text_encoder_2.last_hidden_state"), kTol);
  ASSERT_TRUE(out2.text_embeds.defined());
  EXPECT_TENSOR_NEAR(out2.text_embeds, ref(set, "text_encoder_2.text_embeds"), kTol);
}

TEST(EncodePrompt, SdPromptAndNegativeEmbeddingsMatchDiffusers) {
  REQUIRE_FIXTURES();
  TextEncoders e;
  e.tokenizer = tokenizer("tiny-sd", "tokenizer");
  e.text_encoder = load_clip_text_model(fixtures_dir() / "tiny-sd" / "text_encoder");
  torch::NoGradGuard no_grad;
  auto pos = encode_prompt(e, kPrompts);
  EXPECT_FALSE(pos.pooled_prompt_embeds.defined());
  EXPECT_TENSOR_NEAR(pos.prompt_embeds, ref("tiny-sd", "encode_prompt.prompt_embeds"), kTol);
  EXPECT_TENSOR_NEAR(encode_prompt(e, kNegative).prompt_embeds,
                     ref("tiny-sd", "encode_prompt.negative_prompt_embeds"), kTol);
  // clip_skip = 1: final_layer_norm of the penultimate hidden state.
  auto skipped = encode_prompt(e, kPrompts, 1).prompt_embeds;
  auto expected =
      e.text_encoder->text_model->final_layer_norm(ref("tiny-sd", "text_encoder.hidden_states_penultimate"));
  EXPECT_TENSOR_NEAR(skipped, expected, kTol);
}

TEST(EncodePrompt, SdxlConcatenatesPenultimateStatesAndPoolsFromEncoderTwo) {
  REQUIRE_FIXTURES();
  const std::string set = "tiny-sdxl";
  TextEncoders e;
  e.tokenizer = tokenizer(set, "tokenizer");
  e.tokenizer_2 = tokenizer(set, "tokenizer_2");
  e.text_encoder = load_clip_text_model(fixtures_dir() / set / "text_encoder");
  e.text_encoder_2 = load_clip_text_model(fixtures_dir() / set / "text_encoder_2");
  ASSERT_TRUE(e.is_sdxl());
  torch::NoGradGuard no_grad;
  auto pos = encode_prompt(e, kPrompts);
  EXPECT_TENSOR_NEAR(pos.prompt_embeds, ref(set, "encode_prompt.prompt_embeds"), kTol);
  EXPECT_TENSOR_NEAR(pos.pooled_prompt_embeds, ref(set, "encode_prompt.pooled_prompt_embeds"), kTol);
  auto neg = encode_prompt(e, kNegative);
  EXPECT_TENSOR_NEAR(neg.prompt_embeds, ref(set, "encode_prompt.negative_prompt_embeds"), kTol);
  EXPECT_TENSOR_NEAR(neg.pooled_prompt_embeds, ref(set, "encode_prompt.negative_pooled_prompt_embeds"), kTol);
  // Refiner layout: text_encoder_2 alone gives its own half.
  TextEncoders refiner;
  refiner.tokenizer_2 = e.tokenizer_2;
  refiner.text_encoder_2 = e.text_encoder_2;
  auto half = encode_prompt(refiner, kPrompts).prompt_embeds;
  EXPECT_TENSOR_NEAR(half, ref(set, "encode_prompt.prompt_embeds").slice(2, 32, 64), kTol);
}

TEST(CLIPTextModel, GradientsReachALoRAOnQProjWhileTheBaseStaysFrozen) {
  REQUIRE_FIXTURES();
  auto te = load_clip_text_model(fixtures_dir() / "tiny-sd" / "text_encoder");
  for (auto& p : te->parameters()) p.requires_grad_(false);
  auto q_proj = te->text_model->encoder->layers[0]->as<CLIPEncoderLayer>()->self_attn->q_proj;
  q_proj->enable_lora({4, 4.0, 0.0});
  {
    torch::NoGradGuard no_grad;
    q_proj->lora->up->weight.normal_(0.0, 0.1);  // non-zero B so A receives a gradient too
  }
  bool found_key = false;
  for (const auto& p : te->named_parameters())
    found_key = found_key || p.key() == "text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight";
  EXPECT_TRUE(found_key);
  auto out = te->forward(ref("tiny-sd", "prompts.input_ids"), true);
  (out.last_hidden_state.square().mean() + out.hidden_states[3].mean()).backward();
  ASSERT_TRUE(q_proj->lora->down->weight.grad().defined());
  ASSERT_TRUE(q_proj->lora->up->weight.grad().defined());
  EXPECT_GT(q_proj->lora->down->weight.grad().abs().max().item<double>(), 0.0);
  EXPECT_GT(q_proj->lora->up->weight.grad().abs().max().item<double>(), 0.0);
  EXPECT_FALSE(q_proj->weight.grad().defined());
}

TEST(CLIPTextModel, HalfPrecisionCastKeepsResultsClose) {
  REQUIRE_FIXTURES();
  auto dir = fixtures_dir() / "tiny-sd" / "text_encoder";
  auto te = load_clip_text_model(dir, "", torch::kBFloat16);
  for (const auto& p : te->parameters()) EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  torch::NoGradGuard no_grad;
  auto out = te->forward(ref("tiny-sd", "prompts.input_ids"));
  EXPECT_EQ(out.last_hidden_state.scalar_type(), torch::kBFloat16);
  EXPECT_TENSOR_NEAR(out.last_hidden_state.to(torch::kFloat32),
                     ref("tiny-sd", "text_encoder.last_hidden_state"), 0.1);
}

TEST(CLIPTextModel, PoolsAtFirstEosTokenWhenEosIdIsNotTheLegacyTwo) {
  CLIPTextConfig c;
  c.vocab_size = 50;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.max_position_embeddings = 6;
  c.eos_token_id = 7;
  CLIPTextModel te(c);
  torch::NoGradGuard no_grad;
  auto ids = torch::tensor({3, 9, 7, 40, 7, 1}, torch::kInt64).view({1, 6});
  auto out = te->forward(ids);
  EXPECT_TRUE(torch::equal(out.pooler_output[0], out.last_hidden_state[0][2]));
  te->config.eos_token_id = 2;  // legacy rule: the highest id (40 at position 3)
  te->text_model->config.eos_token_id = 2;
  out = te->forward(ids);
  EXPECT_TRUE(torch::equal(out.pooler_output[0], out.last_hidden_state[0][3]));
  // Causal: changing a later token leaves earlier positions unchanged.
  auto ids2 = ids.clone();
  ids2[0][5] = 11;
  auto out2 = te->forward(ids2);
  EXPECT_TRUE(torch::allclose(out2.last_hidden_state.slice(1, 0, 5), out.last_hidden_state.slice(1, 0, 5)));
  EXPECT_FALSE(torch::allclose(out2.last_hidden_state.slice(1, 5, 6), out.last_hidden_state.slice(1, 5, 6)));
}

TEST(CLIPTextConfig, RoundTripsThroughJsonAndRejectsUnsupportedValuesByKey) {
  REQUIRE_FIXTURES();
  auto c = CLIPTextConfig::from_file(fixtures_dir() / "tiny-sdxl" / "text_encoder_2" / "config.json");
  EXPECT_EQ(c.architecture, "CLIPTextModelWithProjection");
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.eos_token_id, 2);
  auto again = CLIPTextConfig::from_json(c.to_json(), "to_json");
  EXPECT_EQ(again.to_json(), c.to_json());
  auto expect_error = [](io::Json j, const std::string& key) {
    try {
      CLIPTextConfig::from_json(j, "config.json");
      ADD_FAILURE() << "no error for " << key;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  io::Json j = c.to_json();
  j["hidden_act"] = "relu";
  expect_error(j, "hidden_act");
  j = c.to_json();
  j["architectures"] = {"CLIPVisionModel"};
  expect_error(j, "architectures");
  j = c.to_json();
  j["attention_dropout"] = 0.1;
  expect_error(j, "attention_dropout");
  j = c.to_json();
  j["num_attention_heads"] = 5;
  expect_error(j, "num_attention_heads");
}

TEST(CLIPTextModel, StrictLoadingNamesMissingKeysAndIgnoresLegacyPositionIds) {
  REQUIRE_FIXTURES();
  auto src = fixtures_dir() / "tiny-sd" / "text_encoder";
  auto dir = testing::make_temp_dir("clip_te_load");
  std::filesystem::copy_file(src / "config.json", dir / "config.json");
  auto weights = io::safetensors::File::open(src / "model.safetensors").load_all();
  weights["text_model.embeddings.position_ids"] = torch::arange(77, torch::kInt64).view({1, 77});
  io::safetensors::save(dir / "model.safetensors", weights);
  EXPECT_NO_THROW(load_clip_text_model(dir));
  weights.erase("text_model.final_layer_norm.bias");
  io::safetensors::save(dir / "model.safetensors", weights);
  try {
    load_clip_text_model(dir);
    ADD_FAILURE() << "expected a missing-key error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("text_model.final_layer_norm.bias"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::text
