#include "dreamlora/synth/model_presets.h"

#include <torch/torch.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/convert/single_file.h"
#include "dreamlora/convert/standard_configs.h"
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

// The configs are convert::standard_configs (one place, with the sources that confirmed them).
struct PresetSpec {
  std::string name;
  convert::CheckpointFamily family;
  bool v_prediction = false;
};

PresetSpec preset_spec(const std::string& name) {
  if (name == "sd15") return {"sd15", convert::CheckpointFamily::sd1, false};
  if (name == "sd21") return {"sd21", convert::CheckpointFamily::sd2, false};     // stable-diffusion-2-1-base
  if (name == "sd21-v") return {"sd21-v", convert::CheckpointFamily::sd2, true};  // stable-diffusion-2-1
  if (name == "sdxl") return {"sdxl", convert::CheckpointFamily::sdxl, false};
  fail(str("--preset: unknown preset '", name, "' (sd15, sd21, sd21-v, sdxl)"));
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
  const convert::StandardConfigs standard = convert::standard_configs(p.family, p.v_prediction);
  const bool sdxl = p.family == convert::CheckpointFamily::sdxl;
  const fs::path dir = options.single_file ? out / "config" : out;
  fs::create_directories(dir);
  write_preset_json(dir / "model_index.json", standard.model_index);
  write_preset_json(dir / "scheduler" / "scheduler_config.json", standard.scheduler);
  write_preset_tokenizer(options.tokenizer, dir / "tokenizer", standard.tokenizer_pad);
  if (sdxl) write_preset_tokenizer(options.tokenizer, dir / "tokenizer_2", standard.tokenizer_2_pad);

  const auto family = p.family;
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

  auto text_encoder = [&](const std::string& component, const io::Json& json, uint64_t seed) {
    torch::manual_seed(seed);
    write_preset_json(dir / component / "config.json", json);
    DefaultDtypeGuard guard(dtype);
    auto config = text::CLIPTextConfig::from_json(json, component + "/config.json");
    std::shared_ptr<text::CLIPTextModelImpl> impl;
    if (config.with_projection())
      impl = std::make_shared<text::CLIPTextModelWithProjectionImpl>(config);
    else
      impl = std::make_shared<text::CLIPTextModelImpl>(config);
    const std::string prefix = prefixes.at(component);
    const bool openclip = options.single_file && json.value("hidden_act", "") == "gelu";  // OpenCLIP H, bigG
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
  text_encoder("text_encoder", standard.text_encoder, options.seed);
  if (sdxl) text_encoder("text_encoder_2", standard.text_encoder_2, options.seed + 1);
  {
    torch::manual_seed(options.seed + 2);
    auto cfg = unet::UNet2DConditionConfig::from_json(standard.unet, "unet/config.json");
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
    auto cfg = vae::AutoencoderKLConfig::from_json(standard.vae, "vae/config.json");
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
