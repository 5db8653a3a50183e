#include "dreamlora/pipeline/single_file.h"

#include <torch/torch.h>

#include "dreamlora/nn/state_dict.h"

namespace dreamlora::pipeline {

namespace fs = std::filesystem;

namespace {

// Original files keep 1x1 convolutions where diffusers has linear layers (VAE attention, SD1 proj_in/out).
bool differs_by_trailing_ones(at::IntArrayRef a, at::IntArrayRef b) {
  auto strip = [](at::IntArrayRef s) {
    while (!s.empty() && s.back() == 1) s = s.slice(0, s.size() - 1);
    return s;
  };
  return a != b && strip(a) == strip(b);
}

void fill_module(torch::nn::Module& module, const io::safetensors::File& file,
                 const convert::ComponentSources& sources, const std::string& what) {
  DL_CHECK(!sources.empty(), file.path().string(), ": the checkpoint has no ", what, " weights");
  const auto targets = nn::named_tensors(module);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& [name, source] : sources) {
    torch::Tensor t = convert::read_source(file, source);
    auto it = targets.find(name);
    if (it != targets.end() && differs_by_trailing_ones(t.sizes(), it->second.sizes()))
      t = t.reshape(it->second.sizes());
    weights.emplace(name, t);
  }
  nn::load_state_dict_strict(module, weights, str(file.path().string(), " (", what, ")"));
  weights.clear();
  file.release_pages();  // one component at a time resident, as when loading a folder
}

void check_config_dir(const fs::path& file, const fs::path& config_dir, const convert::FamilyDetection& d) {
  const std::string found =
      str(file.string(), ": single-file ", convert::to_string(d.family), " checkpoint (", d.reason, ")");
  DL_CHECK(!config_dir.empty(), found,
           ". Pass --model-config DIR: a diffusers folder of the same architecture whose */config.json, "
           "tokenizer(s) and scheduler config are used (as diffusers' from_single_file(path, config=DIR))");
  auto dir = io::ModelDir::open(config_dir);
  DL_CHECK(dir.is_sdxl() == (d.family == convert::CheckpointFamily::sdxl), found, "; --model-config ",
           config_dir.string(), " is ", dir.is_sdxl() ? "an SDXL" : "a non-SDXL", " pipeline");
}

}  // namespace

bool is_single_file_checkpoint(const fs::path& model) {
  return fs::is_regular_file(model);
}

SingleFileCheckpoint SingleFileCheckpoint::open(const fs::path& file, const fs::path& config_dir) {
  io::refuse_pickle(file);
  SingleFileCheckpoint c;
  c.path_ = file;
  c.config_dir_ = config_dir;
  c.file_ = io::safetensors::File::open(file);
  c.detection_ = convert::detect_family(c.file_);
  check_config_dir(file, config_dir, c.detection_);
  auto unet_config = unet::UNet2DConditionConfig::from_file(config_dir / "unet" / "config.json");
  auto vae_config = vae::AutoencoderKLConfig::from_file(config_dir / "vae" / "config.json");
  c.sources_ = convert::map_single_file(
      c.file_, c.detection_.family,
      convert::UNetLayout::from_config(unet_config.layers_per_block, unet_config.up_block_types),
      static_cast<int64_t>(vae_config.block_out_channels.size()));
  return c;
}

unet::UNet2DConditionModel SingleFileCheckpoint::unet(torch::Dtype dtype) const {
  unet::UNet2DConditionModel model(
      unet::UNet2DConditionConfig::from_file(config_dir_ / "unet" / "config.json"));
  model->to(dtype);
  auto it = sources_.components.find("unet");
  fill_module(*model, file_, it == sources_.components.end() ? convert::ComponentSources{} : it->second,
              "UNet");
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->eval();
  return model;
}

vae::AutoencoderKL SingleFileCheckpoint::vae(torch::Dtype dtype) const {
  auto config = vae::AutoencoderKLConfig::from_file(config_dir_ / "vae" / "config.json");
  if (dtype == torch::kFloat16 && config.force_upcast) dtype = torch::kFloat32;
  vae::AutoencoderKL model(config);
  model->to(dtype);
  auto it = sources_.components.find("vae");
  fill_module(*model, file_, it == sources_.components.end() ? convert::ComponentSources{} : it->second,
              "VAE");
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->eval();
  return model;
}

text::CLIPTextModel SingleFileCheckpoint::text_encoder(const std::string& component,
                                                       torch::Dtype dtype) const {
  auto config = text::CLIPTextConfig::from_file(config_dir_ / component / "config.json");
  std::shared_ptr<text::CLIPTextModelImpl> impl;
  if (config.with_projection())
    impl = std::make_shared<text::CLIPTextModelWithProjectionImpl>(config);
  else
    impl = std::make_shared<text::CLIPTextModelImpl>(config);
  text::CLIPTextModel model(impl);
  auto it = sources_.components.find(component);
  fill_module(*model, file_, it == sources_.components.end() ? convert::ComponentSources{} : it->second,
              str(component, ", ", config.architecture));
  model->to(dtype);
  return model;
}

ModelBundle SingleFileCheckpoint::bundle(const LoadOptions& options) const {
  ModelBundle b;
  b.root = path_;
  b.sdxl = detection_.family == convert::CheckpointFamily::sdxl;
  b.text.tokenizer =
      std::make_shared<const text::CLIPTokenizer>(text::CLIPTokenizer::load(config_dir_ / "tokenizer"));
  b.text.text_encoder = text_encoder("text_encoder", options.dtype);
  if (b.sdxl) {
    b.text.tokenizer_2 =
        std::make_shared<const text::CLIPTokenizer>(text::CLIPTokenizer::load(config_dir_ / "tokenizer_2"));
    b.text.text_encoder_2 = text_encoder("text_encoder_2", options.dtype);
  }
  b.unet = unet(options.dtype);
  b.vae = vae(torch::kFloat32);
  b.scheduler_config_path = config_dir_ / "scheduler" / "scheduler_config.json";
  b.scheduler_config = io::read_json(b.scheduler_config_path);
  return b;
}

}  // namespace dreamlora::pipeline
