#include "dreamlora/synth/tiny_model.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/json.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/synth/clip_bpe_writer.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"

namespace dreamlora::synth {

namespace fs = std::filesystem;

namespace {

// Same shapes as the fixtures' tiny-sd / tiny-sdxl UNets (hf-internal-testing sized).
io::Json unet_config(bool sdxl) {
  io::Json c = {{"_class_name", "UNet2DConditionModel"},
                {"block_out_channels", {32, 64}},
                {"layers_per_block", 2},
                {"in_channels", 4},
                {"out_channels", 4},
                {"norm_num_groups", 32},
                {"sample_size", 32}};
  if (!sdxl) {
    c["down_block_types"] = {"CrossAttnDownBlock2D", "DownBlock2D"};
    c["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D"};
    c["attention_head_dim"] = 8;
    c["cross_attention_dim"] = 32;
    return c;
  }
  c["down_block_types"] = {"DownBlock2D", "CrossAttnDownBlock2D"};
  c["up_block_types"] = {"CrossAttnUpBlock2D", "UpBlock2D"};
  c["attention_head_dim"] = {2, 4};
  c["cross_attention_dim"] = 64;
  c["transformer_layers_per_block"] = {1, 2};
  c["use_linear_projection"] = true;
  c["addition_embed_type"] = "text_time";
  c["addition_time_embed_dim"] = 8;
  c["projection_class_embeddings_input_dim"] = 80;  // 6 time ids * 8 + pooled 32
  return c;
}

io::Json vae_config() {
  return {{"_class_name", "AutoencoderKL"},
          {"act_fn", "silu"},
          {"block_out_channels", {32, 64}},
          {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
          {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
          {"force_upcast", true},
          {"in_channels", 3},
          {"out_channels", 3},
          {"latent_channels", 4},
          {"layers_per_block", 1},
          {"norm_num_groups", 32},
          {"sample_size", 64},
          {"scaling_factor", 0.18215}};
}

// The world pipeline (64x64 images of coloured shapes): a VAE with scale factor 4 (16x16x4 latents) and a
// three-level UNet with cross-attention at 16x16 and 8x8, small enough to pretrain on two CPU cores.
io::Json world_unet_config() {
  return {{"_class_name", "UNet2DConditionModel"},
          {"block_out_channels", {32, 64, 64}},
          {"layers_per_block", 1},
          {"in_channels", 4},
          {"out_channels", 4},
          {"norm_num_groups", 8},  // groups of one channel would normalise flat colours away
          {"sample_size", 16},
          {"down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}},
          {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}},
          {"attention_head_dim", 8},
          {"cross_attention_dim", 32}};
}

io::Json world_vae_config() {
  io::Json c = vae_config();
  c["block_out_channels"] = {16, 32, 64};  // 16 channels at 64x64: most of the VAE's cost is there
  c["norm_num_groups"] = 4;  // 1-channel groups (16) would normalise the colour of flat images away
  c["down_block_types"] = {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"};
  c["up_block_types"] = {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"};
  return c;
}

// Every word of the world's captions, so each one is a single token of the world tokenizer.
constexpr const char* kWorldCorpus =
    "a photo of a red green blue yellow purple white black gray grey orange pink brown cyan magenta\n"
    "circle square triangle star ring toy sks dog on the background with gradient striped plain an\n";

io::Json text_encoder_config(int64_t vocab_size, bool with_projection) {
  return {{"architectures", {with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"bos_token_id", 0},
          {"eos_token_id", 2},
          {"pad_token_id", 1},
          {"hidden_act", with_projection ? "gelu" : "quick_gelu"},
          {"hidden_size", 32},
          {"intermediate_size", 37},
          {"layer_norm_eps", 1e-5},
          {"max_position_embeddings", 77},
          {"num_attention_heads", 4},
          {"num_hidden_layers", 5},
          {"projection_dim", 32},
          {"torch_dtype", "float32"},
          {"vocab_size", vocab_size}};
}

io::Json scheduler_config(bool sdxl) {
  return {{"_class_name", sdxl ? "EulerDiscreteScheduler" : "PNDMScheduler"},
          {"beta_start", 0.00085},
          {"beta_end", 0.012},
          {"beta_schedule", "scaled_linear"},
          {"clip_sample", false},
          {"num_train_timesteps", 1000},
          {"prediction_type", "epsilon"},
          {"set_alpha_to_one", false},
          {"skip_prk_steps", true},
          {"steps_offset", 1},
          {"timestep_spacing", "leading"},
          {"trained_betas", nullptr}};
}

// The world pipeline's 16x16 latents keep their mean colour through scaled_linear's noise at t = 999
// (sqrt(alpha_bar) 0.068 against noise averaged over 256 positions), so a model trained with it copies the
// background colour of its starting noise. DDPM's linear betas leave 0.0066 of the signal, and trailing
// spacing starts sampling at t = 999.
io::Json world_scheduler_config() {
  auto c = scheduler_config(false);
  c["beta_schedule"] = "linear";
  c["beta_start"] = 0.0001;
  c["beta_end"] = 0.02;
  c["timestep_spacing"] = "trailing";
  return c;
}

void write_json(const fs::path& path, const io::Json& json) {
  fs::create_directories(path.parent_path());
  io::write_file_durably(path, json.dump(2) + "\n");
}

// World captions are at most 12 tokens with bos and eos. Padded to 77, a word that tells two prompts apart
// is 1 of 77 positions, and cross-attention, uniform at first, passes on 1/77 of the difference: the UNet
// learned to follow prompts only slowly. Padded to 16 (diffusers pads to the tokenizer's
// model_max_length), the difference is 1/16 of what it sees from the first step.
constexpr int64_t kWorldPromptTokens = 16;

void shorten_world_prompts(const fs::path& tokenizer_config) {
  auto config = io::read_json(tokenizer_config);
  config["model_max_length"] = kWorldPromptTokens;
  write_json(tokenizer_config, config);
}

void write_weights(const fs::path& path, const torch::nn::Module& module) {
  io::safetensors::save(path, nn::named_tensors(module));
}

}  // namespace

void write_tiny_model(const fs::path& dir, const TinyModelOptions& options) {
  DL_CHECK(!(options.world && options.sdxl), "make-tiny-model: --world is an SD1.x-style pipeline, not SDXL");
  fs::create_directories(dir);
  const bool sdxl = options.sdxl;
  io::Json index = {{"_class_name", sdxl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"},
                    {"_diffusers_version", "0.27.2"},
                    {"scheduler", {"diffusers", sdxl ? "EulerDiscreteScheduler" : "PNDMScheduler"}},
                    {"text_encoder", {"transformers", "CLIPTextModel"}},
                    {"tokenizer", {"transformers", "CLIPTokenizer"}},
                    {"unet", {"diffusers", "UNet2DConditionModel"}},
                    {"vae", {"diffusers", "AutoencoderKL"}}};
  if (sdxl) {
    index["text_encoder_2"] = {"transformers", "CLIPTextModelWithProjection"};
    index["tokenizer_2"] = {"transformers", "CLIPTokenizer"};
    index["force_zeros_for_empty_prompt"] = true;
  } else {
    index["safety_checker"] = {nullptr, nullptr};
    index["feature_extractor"] = {nullptr, nullptr};
    index["requires_safety_checker"] = false;
  }
  write_json(dir / "model_index.json", index);
  write_json(dir / "scheduler" / "scheduler_config.json",
             options.world ? world_scheduler_config() : scheduler_config(sdxl));

  const int64_t vocab = options.world ? write_tiny_bpe_tokenizer(dir / "tokenizer", kWorldCorpus, 400)
                                      : write_tiny_bpe_tokenizer(dir / "tokenizer");
  if (options.world) shorten_world_prompts(dir / "tokenizer" / "tokenizer_config.json");
  if (sdxl) write_tiny_bpe_tokenizer(dir / "tokenizer_2", "", 200, "!");

  torch::manual_seed(options.seed);
  auto te_json = text_encoder_config(vocab, false);
  write_json(dir / "text_encoder" / "config.json", te_json);
  text::CLIPTextModel te(text::CLIPTextConfig::from_json(te_json, "text_encoder/config.json"));
  write_weights(dir / "text_encoder" / "model.safetensors", *te);
  if (sdxl) {
    torch::manual_seed(options.seed + 1);
    auto te2_json = text_encoder_config(vocab, true);
    write_json(dir / "text_encoder_2" / "config.json", te2_json);
    text::CLIPTextModelWithProjection te2(
        text::CLIPTextConfig::from_json(te2_json, "text_encoder_2/config.json"));
    write_weights(dir / "text_encoder_2" / "model.safetensors", *te2);
  }

  torch::manual_seed(options.seed + 2);
  auto unet_cfg = unet::UNet2DConditionConfig::from_json(
      options.world ? world_unet_config() : unet_config(sdxl), "unet/config.json");
  write_json(dir / "unet" / "config.json", unet_cfg.to_json());
  unet::UNet2DConditionModel unet(unet_cfg);
  write_weights(dir / "unet" / "diffusion_pytorch_model.safetensors", *unet);

  torch::manual_seed(options.seed + 3);
  auto vae_cfg = vae::AutoencoderKLConfig::from_json(options.world ? world_vae_config() : vae_config(),
                                                     "vae/config.json");
  write_json(dir / "vae" / "config.json", vae_cfg.to_json());
  vae::AutoencoderKL vae(vae_cfg);
  write_weights(dir / "vae" / "diffusion_pytorch_model.safetensors", *vae);
}

}  // namespace dreamlora::synth
