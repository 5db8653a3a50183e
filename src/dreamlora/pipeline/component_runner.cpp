#include "dreamlora/pipeline/component_runner.h"

#include <torch/torch.h>

#include <optional>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/pipeline/single_file.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/text/clip_tokenizer.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"

namespace dreamlora::pipeline {

namespace fs = std::filesystem;

namespace {

using Tensors = std::map<std::string, torch::Tensor>;

// The named input cast to dtype, or an error naming it and the expected shape.
torch::Tensor input(const Tensors& in, const std::string& name, const std::string& shape, torch::Dtype dtype,
                    int64_t dims) {
  auto it = in.find(name);
  DL_CHECK(it != in.end(), "--inputs: missing tensor '", name, "' (expected ", shape, ")");
  DL_CHECK(it->second.dim() == dims, "--inputs: tensor '", name, "' has shape ", it->second.sizes(),
           ", expected ", shape);
  return it->second.to(dtype);
}

void apply_to(torch::nn::Module& module, const std::string& component, const ComponentRunArgs& args,
              const lora::UNetLayout& layout) {
  if (args.lora.empty()) return;
  auto weights = lora::load_lora_file(args.lora, layout);
  auto it = weights.components.find(component);
  if (it == weights.components.end()) return;
  lora::apply_lora(module, it->second, args.lora);
  lora::set_lora_multiplier(module, args.lora_scale);
}

Tensors run_tokenizer(const ComponentRunArgs& args, const fs::path& dir) {
  DL_CHECK(!args.prompts.empty(), "--prompts FILE.json is required for component ", args.component);
  auto prompts = io::read_json(args.prompts);
  DL_CHECK(prompts.is_array(), args.prompts, ": expected a JSON list of strings");
  std::vector<std::string> texts;
  for (const auto& p : prompts) {
    DL_CHECK(p.is_string(), args.prompts, ": expected a JSON list of strings, found ", p.dump());
    texts.push_back(p.get<std::string>());
  }
  auto tok = text::CLIPTokenizer::load(dir);
  std::vector<int64_t> ids, mask;
  for (const auto& t : texts) {
    auto e = tok.encode(t);
    ids.insert(ids.end(), e.input_ids.begin(), e.input_ids.end());
    mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
  }
  const int64_t n = static_cast<int64_t>(texts.size());
  return {{"input_ids", torch::tensor(ids, torch::kInt64).view({n, -1})},
          {"attention_mask", torch::tensor(mask, torch::kInt64).view({n, -1})}};
}

}  // namespace

void apply_lora_file(ModelBundle& model, const std::string& path, double scale) {
  auto weights = lora::load_lora_file(path, lora::UNetLayout::from_unet(*model.unet));
  for (const auto& [component, modules] : weights.components) {
    torch::nn::Module* target = nullptr;
    if (component == "unet")
      target = model.unet.get();
    else if (component == "text_encoder")
      target = model.text.text_encoder.get();
    else if (component == "text_encoder_2" && model.sdxl)
      target = model.text.text_encoder_2.get();
    DL_CHECK(target != nullptr, path, ": LoRA for component '", component,
             "' which this model does not have");
    lora::apply_lora(*target, modules, path);
    // Merged into the base weights: sampling runs at the speed of the plain model.
    lora::fuse_lora(*target, scale);
  }
}

Tensors run_component(const ComponentRunArgs& args) {
  const std::string& c = args.component;
  std::optional<SingleFileCheckpoint> single;
  fs::path model_dir = args.model;
  if (is_single_file_checkpoint(args.model)) {
    single = SingleFileCheckpoint::open(args.model, args.model_config);
    DL_CHECK(!args.model_config.empty(), args.model,
             ": run-component reads the configs and tokenizers of a single file's architecture from "
             "--model-config DIR");
    model_dir = args.model_config;
  }
  auto dir = io::ModelDir::open(model_dir);
  if (c == "tokenizer" || c == "tokenizer_2") return run_tokenizer(args, dir.component_dir(c));
  DL_CHECK(!args.inputs.empty(), "--inputs FILE.safetensors is required for component ", c);
  Tensors in = io::safetensors::File::open(args.inputs).load_all();
  torch::NoGradGuard no_grad;
  if (c == "text_encoder" || c == "text_encoder_2") {
    auto te = single ? single->text_encoder(c, torch::kFloat32)
                     : text::load_clip_text_model(dir.component_dir(c), args.variant);
    apply_to(*te, c, args, lora::UNetLayout::sdxl_base());
    auto ids = input(in, "input_ids", "int64 [B, 77]", torch::kInt64, 2);
    auto out = te->forward(ids, /*output_hidden_states=*/true);
    Tensors result = {{"last_hidden_state", out.last_hidden_state},
                      {"penultimate_hidden_state", out.hidden_states.at(out.hidden_states.size() - 2)}};
    if (out.text_embeds.defined())
      result["text_embeds"] = out.text_embeds;
    else
      result["pooler_output"] = out.pooler_output;
    return result;
  }
  if (c == "unet") {
    auto unet = single ? single->unet(torch::kFloat32)
                       : unet::UNet2DConditionModelImpl::load(dir.component_dir("unet"), args.variant);
    apply_to(*unet, "unet", args, lora::UNetLayout::from_unet(*unet));
    auto dtype = unet->dtype();
    auto sample = input(in, "sample", "[B, C, H, W]", dtype, 4);
    auto t = in.count("timestep") ? in.at("timestep") : input(in, "timesteps", "[B]", torch::kInt64, 1);
    auto ehs = input(in, "encoder_hidden_states", "[B, L, D]", dtype, 3);
    torch::Tensor text_embeds, time_ids;
    if (unet->config.has_text_time()) {
      text_embeds = input(in, "text_embeds", "[B, P]", dtype, 2);
      time_ids = input(in, "time_ids", "[B, 6]", dtype, 2);
    }
    return {{"sample", unet->forward(sample, t, ehs, text_embeds, time_ids)}};
  }
  if (c == "vae_encoder" || c == "vae_decoder") {
    auto vae = single ? single->vae(torch::kFloat32)
                      : vae::AutoencoderKLImpl::load(dir.component_dir("vae"), args.variant);
    if (c == "vae_encoder") {
      auto dist = vae->encode(input(in, "sample", "[B, 3, H, W] in [-1, 1]", vae->dtype(), 4));
      return {{"mean", dist.mean}, {"logvar", dist.logvar}};
    }
    return {{"sample", vae->decode(input(in, "latents", "[B, C, h, w] (unscaled)", vae->dtype(), 4))}};
  }
  fail(str("--component: unknown component '", c,
           "' (tokenizer, tokenizer_2, text_encoder, text_encoder_2, unet, vae_encoder, vae_decoder)"));
}

}  // namespace dreamlora::pipeline
