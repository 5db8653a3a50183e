#include "dreamlora/pipeline/single_file.h"

#include <torch/torch.h>

#include "dreamlora/convert/standard_configs.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/nn/uninitialized.h"

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

std::string found_text(const fs::path& file, const convert::FamilyDetection& d) {
  return str(file.string(), ": single-file ", convert::to_string(d.family), " checkpoint (", d.reason, ")");
}

void check_config_dir(const fs::path& file, const fs::path& config_dir, const convert::FamilyDetection& d) {
  auto dir = io::ModelDir::open(config_dir);
  DL_CHECK(dir.is_sdxl() == (d.family == convert::CheckpointFamily::sdxl), found_text(file, d),
           "; --model-config ", config_dir.string(), " is ", dir.is_sdxl() ? "an SDXL" : "a non-SDXL",
           " pipeline");
}

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A few tensors that tell the standard architecture from another one of the same family (the tiny test
// models, a pruned fine-tune): checked before anything is built, so the error says what to pass.
void check_standard_shapes(const fs::path& path, const io::safetensors::File& file,
                           const convert::FamilyDetection& d, const convert::StandardConfigs& c) {
  const auto prefixes = convert::component_prefixes(d.family);
  const int64_t unet_channels = c.unet["block_out_channels"][0].get<int64_t>();
  const int64_t in_channels = c.unet["in_channels"].get<int64_t>();
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {prefixes.at("unet") + "input_blocks.0.0.weight", {unet_channels, in_channels, 3, 3}},
      {prefixes.at("vae") + "encoder.conv_in.weight",
       {c.vae["block_out_channels"][0].get<int64_t>(), 3, 3, 3}}};
  auto token_embedding = [&](const std::string& component, const io::Json& config) {
    const std::string name = d.family == convert::CheckpointFamily::sd2 || component == "text_encoder_2"
                                 ? "token_embedding.weight"
                                 : "text_model.embeddings.token_embedding.weight";
    expected.push_back({prefixes.at(component) + name,
                        {config["vocab_size"].get<int64_t>(), config["hidden_size"].get<int64_t>()}});
  };
  token_embedding("text_encoder", c.text_encoder);
  if (!c.text_encoder_2.is_null()) token_embedding("text_encoder_2", c.text_encoder_2);
  for (const auto& [key, shape] : expected) {
    if (!file.contains(key)) continue;  // the key mapping names what is missing
    const auto actual = file.info(key).shape;
    DL_CHECK(actual == shape, found_text(path, d), ": ", key, " is ", shape_text(actual),
             " where the standard ", c.repo, " architecture has ", shape_text(shape),
             ". Pass --model-config DIR: a diffusers folder of the file's architecture");
  }
}

// --tokenizer DIR: the BPE files themselves, or a diffusers folder holding them in tokenizer/.
fs::path tokenizer_files(const fs::path& dir) {
  if (fs::exists(dir / "vocab.json")) return dir;
  if (fs::exists(dir / "tokenizer" / "vocab.json")) return dir / "tokenizer";
  fail(str(
      "--tokenizer ", dir.string(),
      ": no CLIP BPE tokenizer there (vocab.json and merges.txt, or a diffusers folder with tokenizer/)"));
}

}  // namespace

bool is_single_file_checkpoint(const fs::path& model) {
  return fs::is_regular_file(model);
}

SingleFileCheckpoint SingleFileCheckpoint::open(const fs::path& file, const SingleFileOptions& options) {
  io::refuse_pickle(file);
  SingleFileCheckpoint c;
  c.path_ = file;
  c.options_ = options;
  c.file_ = io::safetensors::File::open(file);
  c.detection_ = convert::detect_family(c.file_);
  const auto& d = c.detection_;
  const bool sdxl = d.family == convert::CheckpointFamily::sdxl;
  if (!options.config_dir.empty()) {
    check_config_dir(file, options.config_dir, d);
    c.config_source_ = options.config_dir.string();
    c.unet_json_ = io::read_json(options.config_dir / "unet" / "config.json");
    c.vae_json_ = io::read_json(options.config_dir / "vae" / "config.json");
    c.scheduler_json_ = io::read_json(options.config_dir / "scheduler" / "scheduler_config.json");
    c.text_encoder_json_["text_encoder"] = io::read_json(options.config_dir / "text_encoder" / "config.json");
    if (sdxl)
      c.text_encoder_json_["text_encoder_2"] =
          io::read_json(options.config_dir / "text_encoder_2" / "config.json");
  } else {
    const bool v_prediction =
        options.prediction_type.empty() ? d.v_prediction : options.prediction_type == "v_prediction";
    auto standard = convert::standard_configs(d.family, v_prediction);
    if (d.inpainting) standard.unet["in_channels"] = 9;  // as diffusers' from_single_file
    check_standard_shapes(file, c.file_, d, standard);
    c.config_source_ = standard.repo + " (built in)";
    c.unet_json_ = standard.unet;
    c.vae_json_ = standard.vae;
    c.scheduler_json_ = standard.scheduler;
    c.text_encoder_json_["text_encoder"] = standard.text_encoder;
    if (sdxl) c.text_encoder_json_["text_encoder_2"] = standard.text_encoder_2;
  }
  // --tokenizer gives BPE files only: the pad tokens are the family's.
  const auto pads = convert::standard_configs(d.family, false);
  c.tokenizer_pad_ = {{"tokenizer", pads.tokenizer_pad}, {"tokenizer_2", pads.tokenizer_2_pad}};
  if (!options.prediction_type.empty()) c.scheduler_json_["prediction_type"] = options.prediction_type;
  auto unet_config = unet::UNet2DConditionConfig::from_json(c.unet_json_, c.config_source_ + ": unet config");
  auto vae_config = vae::AutoencoderKLConfig::from_json(c.vae_json_, c.config_source_ + ": vae config");
  c.sources_ = convert::map_single_file(
      c.file_, d.family,
      convert::UNetLayout::from_config(unet_config.layers_per_block, unet_config.up_block_types),
      static_cast<int64_t>(vae_config.block_out_channels.size()));
  return c;
}

text::CLIPTokenizer SingleFileCheckpoint::tokenizer(const std::string& component) const {
  if (!options_.tokenizer.empty()) {
    const auto pad = tokenizer_pad_.find(component);
    return text::CLIPTokenizer::load(tokenizer_files(options_.tokenizer),
                                     pad == tokenizer_pad_.end() ? "" : pad->second);
  }
  DL_CHECK(
      !options_.config_dir.empty(), found_text(path_, detection_), ": its configs are built in (",
      config_source_,
      ") but the CLIP tokenizer is not (vocab.json + merges.txt, 1.5 MB). Pass --tokenizer DIR (the "
      "tokenizer/ folder of any Stable Diffusion download, or the download itself) or --model-config DIR "
      "(a diffusers folder of the same architecture)");
  return text::CLIPTokenizer::load(options_.config_dir / component);
}

unet::UNet2DConditionModel SingleFileCheckpoint::unet(torch::Dtype dtype) const {
  const auto config = unet::UNet2DConditionConfig::from_json(unet_json_, config_source_ + ": unet config");
  unet::UNet2DConditionModel model = [&] {
    nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
    return unet::UNet2DConditionModel(config);
  }();
  model->to(dtype);
  auto it = sources_.components.find("unet");
  fill_module(*model, file_, it == sources_.components.end() ? convert::ComponentSources{} : it->second,
              "UNet");
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->eval();
  return model;
}

vae::AutoencoderKL SingleFileCheckpoint::vae(torch::Dtype dtype) const {
  auto config = vae::AutoencoderKLConfig::from_json(vae_json_, config_source_ + ": vae config");
  if (dtype == torch::kFloat16 && config.force_upcast) dtype = torch::kFloat32;
  vae::AutoencoderKL model = [&] {
    nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
    return vae::AutoencoderKL(config);
  }();
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
  auto config = text::CLIPTextConfig::from_json(text_encoder_json_.at(component),
                                                config_source_ + ": " + component + " config");
  std::shared_ptr<text::CLIPTextModelImpl> impl;
  nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
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
  b.text.tokenizer = std::make_shared<const text::CLIPTokenizer>(tokenizer("tokenizer"));
  b.text.text_encoder = text_encoder("text_encoder", options.dtype);
  if (b.sdxl) {
    b.text.tokenizer_2 = std::make_shared<const text::CLIPTokenizer>(tokenizer("tokenizer_2"));
    b.text.text_encoder_2 = text_encoder("text_encoder_2", options.dtype);
  }
  b.unet = unet(options.dtype);
  b.vae = vae(torch::kFloat32);
  if (!options_.config_dir.empty())
    b.scheduler_config_path = options_.config_dir / "scheduler" / "scheduler_config.json";
  b.scheduler_config = scheduler_json_;
  return b;
}

}  // namespace dreamlora::pipeline
