// Single-file checkpoints (original LDM/SGM layout) against the diffusers folders they were converted from
// by diffusers' own scripts: every weight and every component output is bit-identical; the family is
// detected with a reason; unknown keys are one error listing them; EMA copies are ignored as diffusers does.
#include "dreamlora/convert/single_file.h"

#include <torch/torch.h>

#include <fstream>
#include <functional>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/pipeline/single_file.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::io;
using namespace dreamlora::nn;
using namespace dreamlora::pipeline;
namespace fs = std::filesystem;
using dreamlora::testing::fixtures_dir;

namespace {

struct Pair {
  ModelBundle folder, file;
};

Pair& loaded(const std::string& set) {
  static std::map<std::string, Pair> cache;
  auto it = cache.find(set);
  if (it != cache.end()) return it->second;
  LoadOptions from_file;
  from_file.model_config = fixtures_dir() / set;
  Pair p{ModelBundle::load(fixtures_dir() / set, {}),
         ModelBundle::load(fixtures_dir() / set / "single-file.safetensors", from_file)};
  return cache.emplace(set, std::move(p)).first->second;
}

void expect_same_weights(const torch::nn::Module& a, const torch::nn::Module& b, const std::string& what) {
  auto wa = named_tensors(a), wb = named_tensors(b);
  ASSERT_EQ(wa.size(), wb.size()) << what;
  for (const auto& [name, t] : wa) {
    ASSERT_TRUE(wb.count(name)) << what << ": " << name;
    EXPECT_TRUE(torch::equal(t, wb.at(name))) << what << ": " << name;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

safetensors::File reference(const std::string& set) {
  return safetensors::File::open(fixtures_dir() / set / "reference.safetensors");
}

class SingleFileParity : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(SingleFileParity, EveryWeightEqualsTheDiffusersFolder) {
  REQUIRE_FIXTURES();
  auto& p = loaded(GetParam());
  expect_same_weights(*p.folder.unet, *p.file.unet, "unet");
  expect_same_weights(*p.folder.vae, *p.file.vae, "vae");
  expect_same_weights(*p.folder.text.text_encoder, *p.file.text.text_encoder, "text_encoder");
  if (p.folder.sdxl)
    expect_same_weights(*p.folder.text.text_encoder_2, *p.file.text.text_encoder_2, "text_encoder_2");
  EXPECT_EQ(p.folder.sdxl, p.file.sdxl);
  EXPECT_EQ(p.folder.scheduler_config, p.file.scheduler_config);
}

TEST_P(SingleFileParity, TextEncoderUNetAndVaeOutputsAreBitIdentical) {
  REQUIRE_FIXTURES();
  auto& p = loaded(GetParam());
  auto ref = reference(GetParam());
  torch::NoGradGuard no_grad;
  auto ids = ref.get("prompts.input_ids");
  for (const char* te : {"text_encoder", "text_encoder_2"}) {
    if (std::string(te) == "text_encoder_2" && !p.folder.sdxl) continue;
    auto& a = std::string(te) == "text_encoder" ? p.folder.text.text_encoder : p.folder.text.text_encoder_2;
    auto& b = std::string(te) == "text_encoder" ? p.file.text.text_encoder : p.file.text.text_encoder_2;
    auto oa = a->forward(ids, true), ob = b->forward(ids, true);
    EXPECT_TRUE(torch::equal(oa.last_hidden_state, ob.last_hidden_state)) << te;
    EXPECT_TRUE(torch::equal(oa.hidden_states.at(oa.hidden_states.size() - 2),
                             ob.hidden_states.at(ob.hidden_states.size() - 2)))
        << te;
    if (oa.text_embeds.defined()) EXPECT_TRUE(torch::equal(oa.text_embeds, ob.text_embeds)) << te;
  }
  torch::Tensor text_embeds, time_ids;
  if (p.folder.sdxl) {
    text_embeds = ref.get("unet.added_cond.text_embeds");
    time_ids = ref.get("unet.added_cond.time_ids");
  }
  auto sample = ref.get("unet.sample"), t = ref.get("unet.timesteps"),
       ehs = ref.get("unet.encoder_hidden_states");
  auto ua = p.folder.unet->forward(sample, t, ehs, text_embeds, time_ids);
  auto ub = p.file.unet->forward(sample, t, ehs, text_embeds, time_ids);
  EXPECT_TRUE(torch::equal(ua, ub));
  // And both are the diffusers reference (within the fixtures' own tolerance).
  EXPECT_LT(dreamlora::testing::max_abs_diff(ub, ref.get("unet.out")), 1e-4);
  auto image = ref.get("vae.image");
  auto ea = p.folder.vae->encode(image), eb = p.file.vae->encode(image);
  EXPECT_TRUE(torch::equal(ea.mean, eb.mean));
  EXPECT_TRUE(torch::equal(ea.logvar, eb.logvar));
  auto latents = ref.get("vae.latent_sample");
  EXPECT_TRUE(torch::equal(p.folder.vae->decode(latents), p.file.vae->decode(latents)));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SingleFileParity, ::testing::Values("tiny-sd", "tiny-sdxl"),
                         [](const auto& info) {
                           return info.param == "tiny-sd" ? std::string("sd") : "sdxl";
                         });

TEST(SingleFileFamily, DetectedFromTheKeysWithAReason) {
  REQUIRE_FIXTURES();
  auto sd =
      convert::detect_family(safetensors::File::open(fixtures_dir() / "tiny-sd" / "single-file.safetensors"));
  EXPECT_EQ(sd.family, convert::CheckpointFamily::sd1);
  EXPECT_NE(sd.reason.find("cond_stage_model.transformer."), std::string::npos) << sd.reason;
  EXPECT_FALSE(sd.v_prediction);
  auto xl = convert::detect_family(
      safetensors::File::open(fixtures_dir() / "tiny-sdxl" / "single-file.safetensors"));
  EXPECT_EQ(xl.family, convert::CheckpointFamily::sdxl);
  EXPECT_NE(xl.reason.find("conditioner.embedders.1.model."), std::string::npos) << xl.reason;
}

TEST(SingleFileFamily, WithoutModelConfigTheErrorSaysWhatWasFoundAndWhatToPass) {
  REQUIRE_FIXTURES();
  auto msg = error_of(
      [] { SingleFileCheckpoint::open(fixtures_dir() / "tiny-sd" / "single-file.safetensors", ""); });
  EXPECT_NE(msg.find("SD1.x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--model-config"), std::string::npos) << msg;
  msg = error_of([] {
    SingleFileCheckpoint::open(fixtures_dir() / "tiny-sd" / "single-file.safetensors",
                               fixtures_dir() / "tiny-sdxl");
  });
  EXPECT_NE(msg.find("SDXL"), std::string::npos) << msg;
}

TEST(SingleFileKeys, UnknownKeysAreOneErrorListingThemAndEmaCopiesAreIgnored) {
  REQUIRE_FIXTURES();
  auto dir = dreamlora::testing::make_temp_dir("single-file-keys");
  auto tensors = safetensors::File::open(fixtures_dir() / "tiny-sd" / "single-file.safetensors").load_all();
  auto ema = tensors;
  for (const auto& [k, v] : tensors)
    if (k.rfind("model.diffusion_model.", 0) == 0) ema["model_ema." + k.substr(22)] = v;  // as LDM flattens
  ema["alphas_cumprod"] = torch::ones({1000});
  safetensors::save(dir / "ema.safetensors", ema);
  LoadOptions o;
  o.model_config = fixtures_dir() / "tiny-sd";
  auto with_ema = ModelBundle::load(dir / "ema.safetensors", o);
  expect_same_weights(*loaded("tiny-sd").folder.unet, *with_ema.unet, "unet with model_ema.* keys");

  auto bad = tensors;
  bad["model.diffusion_model.not_a_block.weight"] = torch::ones({1});
  bad["embedding_manager.x"] = torch::ones({1});
  safetensors::save(dir / "bad.safetensors", bad);
  auto msg = error_of([&] { ModelBundle::load(dir / "bad.safetensors", o); });
  EXPECT_NE(msg.find("2 key(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.diffusion_model.not_a_block.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("embedding_manager.x"), std::string::npos) << msg;

  auto missing = tensors;
  missing.erase("first_stage_model.decoder.conv_in.weight");
  safetensors::save(dir / "missing.safetensors", missing);
  msg = error_of([&] { ModelBundle::load(dir / "missing.safetensors", o); });
  EXPECT_NE(msg.find("decoder.conv_in.weight"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(SingleFileKeys, PickleIsRefused) {
  auto dir = dreamlora::testing::make_temp_dir("single-file-pickle");
  {
    std::ofstream(dir / "model.ckpt") << "not read";
  }
  auto msg = error_of([&] { ModelBundle::load(dir / "model.ckpt", {}); });
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(LdmNames, VaeAndOpenClipTablesRoundTrip) {
  for (std::string name :
       {"encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.0.downsample.conv.bias",
        "decoder.up.3.block.2.conv1.weight", "decoder.up.1.upsample.conv.weight",
        "decoder.mid.block_2.norm1.bias", "encoder.mid.attn_1.proj_out.weight", "encoder.norm_out.weight",
        "post_quant_conv.weight"}) {
    EXPECT_EQ(convert::vae_diffusers_to_ldm(convert::vae_ldm_to_diffusers(name, 4), 4), name);
  }
  EXPECT_EQ(convert::vae_ldm_to_diffusers("decoder.up.3.block.2.conv1.weight", 4),
            "decoder.up_blocks.0.resnets.2.conv1.weight");
  EXPECT_EQ(convert::vae_ldm_to_diffusers("encoder.mid.attn_1.q.weight", 4),
            "encoder.mid_block.attentions.0.to_q.weight");
  auto qkv = convert::openclip_to_transformers("transformer.resblocks.3.attn.in_proj_bias");
  ASSERT_EQ(qkv.size(), 3u);
  EXPECT_EQ(qkv[1].name, "text_model.encoder.layers.3.self_attn.k_proj.bias");
  EXPECT_EQ(convert::transformers_to_openclip(qkv[2].name).name, "transformer.resblocks.3.attn.in_proj_bias");
  for (std::string name :
       {"transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.7.ln_2.bias",
        "transformer.resblocks.1.attn.out_proj.weight", "positional_embedding", "text_projection"}) {
    auto mapped = convert::openclip_to_transformers(name);
    ASSERT_EQ(mapped.size(), 1u) << name;
    EXPECT_EQ(convert::transformers_to_openclip(mapped[0].name).name, name);
  }
  EXPECT_TRUE(convert::openclip_to_transformers("logit_scale").empty());
}
