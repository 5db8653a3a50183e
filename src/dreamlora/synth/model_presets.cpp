#include "dreamlora/synth/model_presets.h"

#include <torch/torch.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/convert/single_file.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/json.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/io/safetensors_writer.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"

namespace dreamlora::synth {

namespace fs = std::filesystem;

namespace {

// The numbers below are those of the published config.json files (diffusers 0.2x layout).
struct PresetSpec {
  std::string name, family;  // family: sd1 | sd2 | sdxl
  bool v_prediction = false;
  int64_t unet_sample_size = 64, vae_sample_size = 512;
  bool upcast_attention = false;
};

PresetSpec preset_spec(const std::string& name) {
  if (name == "sd15") return {"sd15", "sd1", false, 64, 512, false};
  if (name == "sd21") return {"sd21", "sd2", false, 64, 512, false};    // stable-diffusion-2-1-base
  if (name == "sd21-v") return {"sd21-v", "sd2", true, 96, 768, true};  // stable-diffusion-2-1
  if (name == "sdxl") return {"sdxl", "sdxl", false, 128, 1024, false};
  fail(str("--preset: unknown preset '", name, "' (sd15, sd21, sd21-v, sdxl)"));
}

io::Json preset_unet_config(const PresetSpec& p) {
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
                {"sample_size", p.unet_sample_size}};
  if (p.family == "sdxl") {
    c["block_out_channels"] = {320, 640, 1280};
    c["down_block_types"] = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    c["up_block_types"] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    c["attention_head_dim"] = {5, 10, 20};
    c["cross_attention_dim"] = 2048;
    c["transformer_layers_per_block"] = {1, 2, 10};
    c["use_linear_projection"] = true;
    c["addition_embed_type"] = "text_time";
    c["addition_time_embed_dim"] = 256;
    c["projection_class_embeddings_input_dim"] = 2816;
    return c;
  }
  c["block_out_channels"] = {320, 640, 1280, 1280};
  c["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                           "DownBlock2D"};
  c["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  if (p.family == "sd1") {
    c["attention_head_dim"] = 8;
    c["cross_attention_dim"] = 768;
  } else {
    c["attention_head_dim"] = {5, 10, 20, 20};
    c["cross_attention_dim"] = 1024;
    c["use_linear_projection"] = true;
    c["upcast_attention"] = p.upcast_attention;
  }
  return c;
}

io::Json preset_vae_config(const PresetSpec& p) {
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
      {"sample_size", p.vae_sample_size},
      {"scaling_factor", p.family == "sdxl" ? 0.13025 : 0.18215}};
}

// kind: "clip-l" (SD1 / SDXL text_encoder), "openclip-h" (SD2), "openclip-bigg" (SDXL text_encoder_2).
io::Json preset_text_encoder_config(const std::string& kind) {
  struct Dims {
    int64_t hidden, intermediate, heads, layers, projection;
    const char* act;
  };
  const Dims d = kind == "clip-l"       ? Dims{768, 3072, 12, 12, 768, "quick_gelu"}
                 : kind == "openclip-h" ? Dims{1024, 4096, 16, 23, 512, "gelu"}
                                        : Dims{1280, 5120, 20, 32, 1280, "gelu"};
  return {{"architectures", {kind == "openclip-bigg" ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
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

io::Json preset_scheduler_config(const PresetSpec& p) {
  io::Json c = {{"beta_start", 0.00085},
                {"beta_end", 0.012},
                {"beta_schedule", "scaled_linear"},
                {"clip_sample", false},
                {"num_train_timesteps", 1000},
                {"set_alpha_to_one", false},
                {"skip_prk_steps", true},
                {"steps_offset", 1},
                {"trained_betas", nullptr},
                {"prediction_type", p.v_prediction ? "v_prediction" : "epsilon"}};
  if (p.family == "sdxl") {
    c["_class_name"] = "EulerDiscreteScheduler";
    c["interpolation_type"] = "linear";
    c["sample_max_value"] = 1.0;
    c["timestep_spacing"] = "leading";
    c["use_karras_sigmas"] = false;
  } else {
    c["_class_name"] = p.v_prediction ? "DDIMScheduler" : "PNDMScheduler";
  }
  return c;
}

void write_preset_json(const fs::path& path, const io::Json& json) {
  fs::create_directories(path.parent_path());
  io::write_file_durably(path, json.dump(2) + "\n");
}

// Copies the BPE files and sets the pad token ("<|endoftext|>" for SD1.x, "!" for OpenCLIP tokenizers).
void write_preset_tokenizer(const fs::path& from, const fs::path& to, const std::string& pad) {
  DL_CHECK(fs::exists(from / "vocab.json") && fs::exists(from / "merges.txt"), from.string(),
           ": --tokenizer needs a CLIP BPE tokenizer folder (vocab.json, merges.txt)");
  const io::Json vocab = io::read_json(from / "vocab.json");
  DL_CHECK(vocab.is_object() && vocab.size() == 49408, from.string(),
           "/vocab.json: the presets need the real CLIP ", "vocabulary of 49408 tokens, found ",
           vocab.size());
  fs::create_directories(to);
  fs::copy_file(from / "vocab.json", to / "vocab.json", fs::copy_options::overwrite_existing);
  fs::copy_file(from / "merges.txt", to / "merges.txt", fs::copy_options::overwrite_existing);
  write_preset_json(to / "tokenizer_config.json", {{"tokenizer_class", "CLIPTokenizer"},
                                                   {"bos_token", "<|startoftext|>"},
                                                   {"eos_token", "<|endoftext|>"},
                                                   {"unk_token", "<|endoftext|>"},
                                                   {"pad_token", pad},
                                                   {"model_max_length", 77},
                                                   {"do_lower_case", true}});
  write_preset_json(to / "special_tokens_map.json", {{"bos_token", "<|startoftext|>"},
                                                     {"eos_token", "<|endoftext|>"},
                                                     {"unk_token", "<|endoftext|>"},
                                                     {"pad_token", pad}});
}

// Builds a component with torch's default dtype set to the written dtype, so its random initialisation
// fills memory of the written size (no fp32 copy of an fp16 model).
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(torch::Dtype dtype) : saved_(torch::get_default_dtype()) {
    torch::set_default_dtype(caffe2::TypeMeta::fromScalarType(dtype));
  }
  ~DefaultDtypeGuard() { torch::set_default_dtype(saved_); }

 private:
  caffe2::TypeMeta saved_;
};

// One module's tensors as named in the written file, in the written dtype (views where possible).
using Renamer = std::function<io::safetensors::NamedTensors(const std::string&, const torch::Tensor&)>;

io::safetensors::NamedTensors to_written(const torch::nn::Module& module, torch::Dtype dtype,
                                         const Renamer& rename) {
  io::safetensors::NamedTensors out;
  for (const auto& [name, t] : nn::named_tensors(module)) {
    torch::Tensor w = t.detach();
    if (w.is_floating_point() && w.scalar_type() != dtype) w = w.to(dtype);
    for (auto& named : rename(name, w)) out.push_back(std::move(named));
  }
  return out;
}

Renamer keep_names(const std::string& prefix = "") {
  return [prefix](const std::string& name, const torch::Tensor& t) {
    return io::safetensors::NamedTensors{{prefix + name, t}};
  };
}

}  // namespace

std::vector<std::string> model_preset_names() {
  return {"sd15", "sd21", "sd21-v", "sdxl"};
}

uint64_t write_model_preset(const fs::path& out, const ModelPresetOptions& options) {
  const PresetSpec p = preset_spec(options.preset);
  const bool sdxl = p.family == "sdxl";
  const fs::path dir = options.single_file ? out / "config" : out;
  fs::create_directories(dir);
  io::Json index = {{"_class_name", sdxl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"},
                    {"_diffusers_version", "0.27.2"},
                    {"scheduler", {"diffusers", preset_scheduler_config(p)["_class_name"]}},
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
  write_preset_json(dir / "model_index.json", index);
  write_preset_json(dir / "scheduler" / "scheduler_config.json", preset_scheduler_config(p));
  write_preset_tokenizer(options.tokenizer, dir / "tokenizer", p.family == "sd2" ? "!" : "<|endoftext|>");
  if (sdxl) write_preset_tokenizer(options.tokenizer, dir / "tokenizer_2", "!");

  const auto family = p.family == "sd1"   ? convert::CheckpointFamily::sd1
                      : p.family == "sd2" ? convert::CheckpointFamily::sd2
                                          : convert::CheckpointFamily::sdxl;
  const auto prefixes = convert::component_prefixes(family);
  // Single file: every component's tensors gathered (each already in the written dtype), one file at the end.
  io::safetensors::NamedTensors single;
  uint64_t written = 0;
  auto emit = [&](const fs::path& folder_file, io::safetensors::NamedTensors tensors) {
    for (const auto& [n, t] : tensors) written += static_cast<uint64_t>(t.numel()) * t.element_size();
    if (!options.single_file) {
      io::safetensors::save_streamed(folder_file, tensors);
      return;
    }
    for (auto& named : tensors) single.push_back(std::move(named));
  };
  torch::NoGradGuard no_grad;
  const torch::Dtype dtype = options.dtype;

  auto text_encoder = [&](const std::string& component, const std::string& kind, uint64_t seed) {
    torch::manual_seed(seed);
    const io::Json json = preset_text_encoder_config(kind);
    write_preset_json(dir / component / "config.json", json);
    DefaultDtypeGuard guard(dtype);
    auto config = text::CLIPTextConfig::from_json(json, component + "/config.json");
    std::shared_ptr<text::CLIPTextModelImpl> impl;
    if (config.with_projection())
      impl = std::make_shared<text::CLIPTextModelWithProjectionImpl>(config);
    else
      impl = std::make_shared<text::CLIPTextModelImpl>(config);
    const std::string prefix = prefixes.at(component);
    const bool openclip = options.single_file && kind != "clip-l";
    Renamer rename = keep_names(options.single_file ? prefix : "");
    if (openclip)
      rename = [prefix](const std::string& name, const torch::Tensor& t) {
        // q/k/v become one fused in_proj: emitted once, at q.
        auto o = convert::transformers_to_openclip(name);
        DL_CHECK(!o.name.empty(), "no OpenCLIP name for '", name, "'");
        if (o.change == convert::TensorChange::transpose)
          return io::safetensors::NamedTensors{{prefix + o.name, t.t().contiguous()}};
        return io::safetensors::NamedTensors{{prefix + o.name + "#" + std::to_string(o.part), t}};
      };
    auto tensors = to_written(*impl, dtype, rename);
    if (openclip) {
      std::map<std::string, std::vector<torch::Tensor>> parts;
      io::safetensors::NamedTensors fused;
      for (auto& [n, t] : tensors) {
        auto hash = n.rfind('#');
        const std::string base = n.substr(0, hash);
        if (n.find("in_proj_") == std::string::npos) {
          fused.push_back({base, t});
          continue;
        }
        auto& v = parts[base];
        v.resize(3);
        v[std::stoi(n.substr(hash + 1))] = t;
      }
      for (auto& [base, v] : parts) fused.push_back({base, torch::cat(v)});
      tensors = std::move(fused);
    }
    emit(dir / component / "model.safetensors", std::move(tensors));
  };
  // SD2's text encoder is OpenCLIP ViT-H with the 23 layers diffusers keeps (the 24th is unused).
  text_encoder("text_encoder", p.family == "sd2" ? "openclip-h" : "clip-l", options.seed);
  if (sdxl) text_encoder("text_encoder_2", "openclip-bigg", options.seed + 1);
  {
    torch::manual_seed(options.seed + 2);
    auto cfg = unet::UNet2DConditionConfig::from_json(preset_unet_config(p), "unet/config.json");
    write_preset_json(dir / "unet" / "config.json", cfg.to_json());
    DefaultDtypeGuard guard(dtype);
    unet::UNet2DConditionModel unet(cfg);
    auto layout = convert::UNetLayout::from_unet(*unet);
    const std::string prefix = prefixes.at("unet");
    Renamer rename = options.single_file ? Renamer([&](const std::string& name, const torch::Tensor& t) {
      return io::safetensors::NamedTensors{{prefix + convert::diffusers_to_ldm(name, layout), t}};
    })
                                         : keep_names();
    emit(dir / "unet" / "diffusion_pytorch_model.safetensors", to_written(*unet, dtype, rename));
  }
  {
    torch::manual_seed(options.seed + 3);
    auto cfg = vae::AutoencoderKLConfig::from_json(preset_vae_config(p), "vae/config.json");
    write_preset_json(dir / "vae" / "config.json", cfg.to_json());
    DefaultDtypeGuard guard(dtype);
    vae::AutoencoderKL vae(cfg);
    const std::string prefix = prefixes.at("vae");
    const auto blocks = static_cast<int64_t>(cfg.block_out_channels.size());
    Renamer rename = options.single_file ? Renamer([&](const std::string& name, const torch::Tensor& t) {
      std::string ldm = convert::vae_diffusers_to_ldm(name, blocks);
      // LDM keeps the mid-block attention projections as 1x1 convolutions.
      bool conv = ldm.find("mid.attn_1.") != std::string::npos && t.dim() == 2;
      return io::safetensors::NamedTensors{
          {prefix + ldm, conv ? t.reshape({t.size(0), t.size(1), 1, 1}) : t}};
    })
                                         : keep_names();
    emit(dir / "vae" / "diffusion_pytorch_model.safetensors", to_written(*vae, dtype, rename));
  }
  if (options.single_file) {
    io::safetensors::save_streamed(out / "model.safetensors", single);
    fs::remove_all(dir / "unet" / "diffusion_pytorch_model.safetensors");
  }
  return written;
}

}  // namespace dreamlora::synth
