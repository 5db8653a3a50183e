#include "dreamlora/pipeline/model_bundle.h"

#include <torch/torch.h>

#include "dreamlora/pipeline/single_file.h"

namespace dreamlora::pipeline {

namespace fs = std::filesystem;

namespace {
void check_class(const io::ModelDir& dir, const std::string& component, const std::string& expected) {
  DL_CHECK(dir.has_component(component), (dir.root() / "model_index.json").string(), ": missing component '",
           component, "'");
  const auto& c = dir.component(component);
  DL_CHECK(c.class_name == expected, (dir.root() / "model_index.json").string(), ": component '", component,
           "' is ", c.class_name, "; dreamlora supports ", expected);
}

ModelBundle load_folder(const fs::path& root, const LoadOptions& options) {
  auto dir = io::ModelDir::open(root);
  ModelBundle b;
  b.root = root;
  b.sdxl = dir.is_sdxl();
  check_class(dir, "unet", "UNet2DConditionModel");
  check_class(dir, "vae", "AutoencoderKL");
  check_class(dir, "text_encoder", "CLIPTextModel");
  b.text.tokenizer =
      std::make_shared<const text::CLIPTokenizer>(text::CLIPTokenizer::load(dir.component_dir("tokenizer")));
  b.text.text_encoder =
      text::load_clip_text_model(dir.component_dir("text_encoder"), options.variant, options.dtype);
  if (b.sdxl) {
    check_class(dir, "text_encoder_2", "CLIPTextModelWithProjection");
    b.text.tokenizer_2 = std::make_shared<const text::CLIPTokenizer>(
        text::CLIPTokenizer::load(dir.component_dir("tokenizer_2")));
    b.text.text_encoder_2 =
        text::load_clip_text_model(dir.component_dir("text_encoder_2"), options.variant, options.dtype);
  }
  b.unet = unet::UNet2DConditionModelImpl::load(dir.component_dir("unet"), options.variant, options.dtype);
  // The VAE stays fp32 when its config asks for it (force_upcast): SD-XL's VAE overflows in fp16.
  b.vae = vae::AutoencoderKLImpl::load(dir.component_dir("vae"), options.variant, torch::kFloat32);
  b.scheduler_config_path = dir.component_dir("scheduler") / "scheduler_config.json";
  b.scheduler_config = io::read_json(b.scheduler_config_path);
  return b;
}
}  // namespace

ModelBundle ModelBundle::load(const fs::path& root, const LoadOptions& options) {
  ModelBundle b;
  if (is_single_file_checkpoint(root)) {
    DL_CHECK(options.variant.empty(), root.string(),
             ": --variant selects weight files in a diffusers folder; a "
             "single-file checkpoint has one set of weights");
    b = SingleFileCheckpoint::open(root, {options.model_config, options.tokenizer, options.prediction_type})
            .bundle(options);
  } else {
    b = load_folder(root, options);
  }
  if (!options.prediction_type.empty()) b.scheduler_config["prediction_type"] = options.prediction_type;
  for (torch::nn::Module* m :
       {static_cast<torch::nn::Module*>(b.unet.get()), static_cast<torch::nn::Module*>(b.vae.get()),
        static_cast<torch::nn::Module*>(b.text.text_encoder.get())}) {
    m->to(options.device);
    m->eval();
    for (auto& p : m->parameters()) p.set_requires_grad(false);
  }
  if (b.sdxl) {
    b.text.text_encoder_2->to(options.device);
    b.text.text_encoder_2->eval();
    for (auto& p : b.text.text_encoder_2->parameters()) p.set_requires_grad(false);
  }
  return b;
}

int64_t ModelBundle::vae_scale_factor() const {
  return vae->config().scale_factor();
}

}  // namespace dreamlora::pipeline
