#include "dreamlora/convert/standard_configs.h"

#include "dreamlora/io/durable_file.h"

namespace dreamlora::convert {

namespace fs = std::filesystem;

// Checked on 2026-12-01 against copies of the published config.json files found in public repositories
// (the Hugging Face repositories themselves cannot be reached from here):
// - runwayml/stable-diffusion-v1-5: unet/config.json as quoted (with its URL) by a Rust port's
//   UNetConfig::V1_5, and kohya-ss sd-scripts' library/model_util.py constants (UNET_PARAMS_*: channels
//   320 x [1, 2, 4, 4], 8 heads, context 768, image size 64; VAE 128 x [1, 2, 4, 4]; betas 0.00085..0.012).
// - stabilityai/stable-diffusion-2-1 (768, v): sd-scripts' original_unet.py notes the differences from v1.5
//   (attention_head_dim [5, 10, 20, 20], cross_attention_dim 1024, use_linear_projection, upcast_attention
//   true, sample_size 96), matching a verbatim copy of the unet config; text encoder: OpenCLIP ViT-H with
//   the 23 layers diffusers keeps (gelu, 1024 hidden, 4096 intermediate, 16 heads, projection 512).
//   stable-diffusion-2-1-base differs by sample_size 64 / 512, no upcast and the PNDM epsilon scheduler.
// - stabilityai/stable-diffusion-xl-base-1.0: verbatim copies of model_index, scheduler, unet, vae,
//   text_encoder and text_encoder_2 config.json (an offline-cache setup script) and diffusers' full unet
//   config dict (transformer_layers_per_block [1, 2, 10], projection_class_embeddings_input_dim 2816,
//   addition_time_embed_dim 256, VAE scaling_factor 0.13025, EulerDiscreteScheduler, timestep_spacing
//   leading).
// tests/convert/standard_configs_test.cpp pins these numbers.

namespace {

struct Variant {
  CheckpointFamily family;
  bool v_prediction = false;
  bool sd21_768 = false;  // stabilityai/stable-diffusion-2-1 (the 768 px v-prediction model)
};

io::Json unet_config(const Variant& v) {
  io::Json c = {{"_class_name", "UNet2DConditionModel"},
                {"act_fn", "silu"},
                {"center_input_sample", false},
                {"downsample_padding", 1},
                {"flip_sin_to_cos", true},
                {"freq_shift", 0},
                {"in_channels", 4},
                {"out_channels", 4},
                {"layers_per_block", 2},
                {"mid_block_scale_factor", 1},
                {"norm_eps", 1e-5},
                {"norm_num_groups", 32},
                {"sample_size", v.family == CheckpointFamily::sdxl ? 128
                                : v.sd21_768                       ? 96
                                                                   : 64}};
  if (v.family == CheckpointFamily::sdxl) {
    c["block_out_channels"] = {320, 640, 1280};
    c["down_block_types"] = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    c["up_block_types"] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    c["attention_head_dim"] = {5, 10, 20};
    c["cross_attention_dim"] = 2048;
    c["transformer_layers_per_block"] = {1, 2, 10};
    c["use_linear_projection"] = true;
    c["addition_embed_type"] = "text_time";
    c["addition_embed_type_num_heads"] = 64;
    c["addition_time_embed_dim"] = 256;
    c["projection_class_embeddings_input_dim"] = 2816;
    return c;
  }
  c["block_out_channels"] = {320, 640, 1280, 1280};
  c["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                           "DownBlock2D"};
  c["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  if (v.family == CheckpointFamily::sd1) {
    c["attention_head_dim"] = 8;
    c["cross_attention_dim"] = 768;
  } else {
    c["attention_head_dim"] = {5, 10, 20, 20};
    c["cross_attention_dim"] = 1024;
    c["use_linear_projection"] = true;
    c["upcast_attention"] = v.sd21_768;
  }
  return c;
}

io::Json vae_config(const Variant& v) {
  const bool sdxl = v.family == CheckpointFamily::sdxl;
  return {
      {"_class_name", "AutoencoderKL"},
      {"act_fn", "silu"},
      {"block_out_channels", {128, 256, 512, 512}},
      {"down_block_types",
       {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}},
      {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}},
      {"force_upcast", true},
      {"in_channels", 3},
      {"out_channels", 3},
      {"latent_channels", 4},
      {"layers_per_block", 2},
      {"norm_num_groups", 32},
      {"sample_size", sdxl         ? 1024
                      : v.sd21_768 ? 768
                                   : 512},
      {"scaling_factor", sdxl ? 0.13025 : 0.18215}};
}

enum class TextEncoderKind { clip_l, openclip_h, openclip_bigg };

io::Json text_encoder_config(TextEncoderKind kind) {
  struct Dims {
    int64_t hidden, intermediate, heads, layers, projection;
    const char* act;
  };
  const Dims d = kind == TextEncoderKind::clip_l       ? Dims{768, 3072, 12, 12, 768, "quick_gelu"}
                 : kind == TextEncoderKind::openclip_h ? Dims{1024, 4096, 16, 23, 512, "gelu"}
                                                       : Dims{1280, 5120, 20, 32, 1280, "gelu"};
  const bool projection = kind == TextEncoderKind::openclip_bigg;
  return {{"architectures", {projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"attention_dropout", 0.0},
          {"bos_token_id", 0},
          {"eos_token_id", 2},
          {"pad_token_id", 1},
          {"hidden_act", d.act},
          {"hidden_size", d.hidden},
          {"initializer_factor", 1.0},
          {"initializer_range", 0.02},
          {"intermediate_size", d.intermediate},
          {"layer_norm_eps", 1e-5},
          {"max_position_embeddings", 77},
          {"num_attention_heads", d.heads},
          {"num_hidden_layers", d.layers},
          {"projection_dim", d.projection},
          {"torch_dtype", "float32"},
          {"vocab_size", 49408}};
}

io::Json scheduler_config(const Variant& v) {
  io::Json c = {{"beta_start", 0.00085},
                {"beta_end", 0.012},
                {"beta_schedule", "scaled_linear"},
                {"clip_sample", false},
                {"num_train_timesteps", 1000},
                {"set_alpha_to_one", false},
                {"skip_prk_steps", true},
                {"steps_offset", 1},
                {"trained_betas", nullptr},
                {"prediction_type", v.v_prediction ? "v_prediction" : "epsilon"}};
  if (v.family == CheckpointFamily::sdxl) {
    c["_class_name"] = "EulerDiscreteScheduler";
    c["interpolation_type"] = "linear";
    c["sample_max_value"] = 1.0;
    c["timestep_spacing"] = "leading";
    c["use_karras_sigmas"] = false;
  } else {
    c["_class_name"] = v.sd21_768 ? "DDIMScheduler" : "PNDMScheduler";
  }
  return c;
}

io::Json model_index(const Variant& v, const io::Json& scheduler) {
  const bool sdxl = v.family == CheckpointFamily::sdxl;
  io::Json index = {{"_class_name", sdxl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"},
                    {"_diffusers_version", "0.27.2"},
                    {"scheduler", {"diffusers", scheduler["_class_name"]}},
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
  return index;
}

void write_json(const fs::path& path, const io::Json& json) {
  fs::create_directories(path.parent_path());
  io::write_file_durably(path, json.dump(2) + "\n");
}

}  // namespace

StandardConfigs standard_configs(CheckpointFamily family, bool v_prediction) {
  Variant v{family, v_prediction, family == CheckpointFamily::sd2 && v_prediction};
  StandardConfigs c;
  c.family = family;
  c.repo = family == CheckpointFamily::sd1    ? "runwayml/stable-diffusion-v1-5"
           : family == CheckpointFamily::sdxl ? "stabilityai/stable-diffusion-xl-base-1.0"
           : v.sd21_768                       ? "stabilityai/stable-diffusion-2-1"
                                              : "stabilityai/stable-diffusion-2-1-base";
  c.scheduler = scheduler_config(v);
  c.model_index = model_index(v, c.scheduler);
  c.unet = unet_config(v);
  c.vae = vae_config(v);
  c.text_encoder = text_encoder_config(family == CheckpointFamily::sd2 ? TextEncoderKind::openclip_h
                                                                       : TextEncoderKind::clip_l);
  if (family == CheckpointFamily::sdxl)
    c.text_encoder_2 = text_encoder_config(TextEncoderKind::openclip_bigg);
  // OpenCLIP's tokenizers pad with "!" (id 0); SD1.x's (OpenAI CLIP) with the end-of-text token.
  c.tokenizer_pad = family == CheckpointFamily::sd2 ? "!" : "<|endoftext|>";
  c.tokenizer_2_pad = "!";
  return c;
}

void write_standard_configs(const StandardConfigs& c, const fs::path& dir) {
  write_json(dir / "model_index.json", c.model_index);
  write_json(dir / "scheduler" / "scheduler_config.json", c.scheduler);
  write_json(dir / "unet" / "config.json", c.unet);
  write_json(dir / "vae" / "config.json", c.vae);
  write_json(dir / "text_encoder" / "config.json", c.text_encoder);
  if (!c.text_encoder_2.is_null()) write_json(dir / "text_encoder_2" / "config.json", c.text_encoder_2);
}

}  // namespace dreamlora::convert
