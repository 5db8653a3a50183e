#include "dreamlora/convert/single_file.h"

#include <algorithm>
#include <regex>

#include "dreamlora/common/error.h"

namespace dreamlora::convert {

namespace {

const char* const kUnetPrefix = "model.diffusion_model.";
const char* const kVaePrefix = "first_stage_model.";
const char* const kSd1TextPrefix = "cond_stage_model.transformer.";
const char* const kSd2TextPrefix = "cond_stage_model.model.";
const char* const kSdxlTextPrefix = "conditioner.embedders.0.transformer.";
const char* const kSdxlText2Prefix = "conditioner.embedders.1.model.";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

bool any_key_starts_with(const std::vector<std::string>& keys, const std::string& prefix) {
  return std::any_of(keys.begin(), keys.end(), [&](const auto& k) { return starts_with(k, prefix); });
}

// Keys diffusers' from_single_file drops without a word: EMA copies (model_ema.*, used only with
// extract_ema), the LDM noise-schedule buffers at the top level (betas, alphas_cumprod, ...), CLIP's
// position_ids buffer and OpenCLIP's logit_scale; for SD2 also the 24th OpenCLIP block and the text
// projection, which the diffusers text encoder (23 layers, penultimate output) does not have.
bool diffusers_ignores(const std::string& key, CheckpointFamily family) {
  if (starts_with(key, "model_ema.") || key.find('.') == std::string::npos) return true;
  if (key.size() >= 13 && key.compare(key.size() - 13, 13, ".position_ids") == 0) return true;
  if (key.size() >= 12 && key.compare(key.size() - 12, 12, ".logit_scale") == 0) return true;
  if (family == CheckpointFamily::sd2)
    return starts_with(key, std::string(kSd2TextPrefix) + "transformer.resblocks.23.") ||
           key == std::string(kSd2TextPrefix) + "text_projection";
  return false;
}

void add_source(ComponentSources& sources, const std::string& name, SourceTensor source) {
  DL_CHECK(sources.emplace(name, source).second, "single-file checkpoint: '", source.key, "' and '",
           sources.at(name).key, "' both map to '", name, "'");
}

// LDM numbers the VAE decoder's up blocks from the last (up.{n-1} is diffusers' up_blocks.0). diffusers'
// conversion scripts hardcode n = 4, so a smaller VAE written by them starts at up.3: the numbering is taken
// from the highest index the file holds.
int64_t ldm_decoder_blocks(const std::vector<std::string>& keys, int64_t vae_blocks) {
  static const std::regex up_re(R"(^first_stage_model\.decoder\.up\.(\d+)\.)");
  int64_t top = -1;
  std::smatch m;
  for (const auto& key : keys)
    if (std::regex_search(key, m, up_re)) top = std::max<int64_t>(top, std::stoll(m[1]));
  return top < 0 ? vae_blocks : top + 1;
}

}  // namespace

std::string to_string(CheckpointFamily family) {
  switch (family) {
    case CheckpointFamily::sd1:
      return "SD1.x";
    case CheckpointFamily::sd2:
      return "SD2.x";
    case CheckpointFamily::sdxl:
      return "SDXL base";
  }
  return "?";
}

FamilyDetection detect_family(const io::safetensors::File& file) {
  const auto keys = file.names();
  const std::string what = file.path().string();
  DL_CHECK(any_key_starts_with(keys, kUnetPrefix), what,
           ": not a single-file Stable Diffusion checkpoint (no '", kUnetPrefix, "' keys; ", keys.size(),
           " tensors", keys.empty() ? "" : str(", first '", keys.front(), "'"), ")");
  DL_CHECK(!any_key_starts_with(keys, "conditioner.embedders.0.model."), what,
           ": an SDXL refiner checkpoint (OpenCLIP as its only text encoder); only SDXL base is supported");
  FamilyDetection d;
  const std::string conv_in = std::string(kUnetPrefix) + "input_blocks.0.0.weight";
  d.inpainting =
      file.contains(conv_in) && file.info(conv_in).shape.size() == 4 && file.info(conv_in).shape[1] == 9;
  if (any_key_starts_with(keys, kSdxlText2Prefix)) {
    d.family = CheckpointFamily::sdxl;
    d.reason = str("has a second text encoder in OpenCLIP layout ('", kSdxlText2Prefix, "*')");
  } else if (any_key_starts_with(keys, kSd2TextPrefix)) {
    d.family = CheckpointFamily::sd2;
    d.reason = str("text encoder in OpenCLIP layout ('", kSd2TextPrefix, "*')");
  } else if (any_key_starts_with(keys, kSd1TextPrefix)) {
    d.family = CheckpointFamily::sd1;
    d.reason = str("text encoder in transformers CLIP layout ('", kSd1TextPrefix, "*')");
  } else {
    fail(str(what, ": UNet keys found but no text encoder ('", kSd1TextPrefix, "', '", kSd2TextPrefix,
             "' or '", kSdxlTextPrefix, "' + '", kSdxlText2Prefix,
             "'); cannot tell SD1.x, SD2.x and SDXL apart"));
  }
  if (d.family == CheckpointFamily::sd2) {
    d.v_prediction = true;
    d.reason +=
        "; v-prediction, as diffusers assumes for SD2.x files (--prediction-type or the scheduler config of "
        "--model-config decides)";
  }
  if (d.inpainting) d.reason += "; inpainting UNet (9 input channels)";
  return d;
}

std::map<std::string, std::string> component_prefixes(CheckpointFamily family) {
  std::map<std::string, std::string> p = {{"unet", kUnetPrefix}, {"vae", kVaePrefix}};
  switch (family) {
    case CheckpointFamily::sd1:
      p["text_encoder"] = kSd1TextPrefix;
      break;
    case CheckpointFamily::sd2:
      p["text_encoder"] = kSd2TextPrefix;
      break;
    case CheckpointFamily::sdxl:
      p["text_encoder"] = kSdxlTextPrefix;
      p["text_encoder_2"] = kSdxlText2Prefix;
      break;
  }
  return p;
}

SingleFileSources map_single_file(const io::safetensors::File& file, CheckpointFamily family,
                                  const UNetLayout& unet_layout, int64_t vae_blocks) {
  const auto prefixes = component_prefixes(family);
  const auto keys = file.names();
  const int64_t decoder_blocks = ldm_decoder_blocks(keys, vae_blocks);
  SingleFileSources out;
  std::vector<std::string> unknown;
  for (const auto& key : keys) {
    if (diffusers_ignores(key, family)) {
      out.ignored.push_back(key);
      continue;
    }
    std::string component;
    for (const auto& [c, prefix] : prefixes)
      if (starts_with(key, prefix)) component = c;
    if (component.empty()) {
      unknown.push_back(key);
      continue;
    }
    const std::string rest = key.substr(prefixes.at(component).size());
    ComponentSources& sources = out.components[component];
    if (component == "unet") {
      std::string name;
      try {
        name = ldm_to_diffusers(rest, unet_layout);
      } catch (const Error&) {
        unknown.push_back(key);
        continue;
      }
      add_source(sources, name, {key});
    } else if (component == "vae") {
      add_source(sources, vae_ldm_to_diffusers(rest, decoder_blocks), {key});
    } else if (prefixes.at(component) == kSd2TextPrefix || prefixes.at(component) == kSdxlText2Prefix) {
      auto names = openclip_to_transformers(rest);
      if (names.empty()) unknown.push_back(key);
      for (const auto& n : names) add_source(sources, n.name, {key, n.change, n.part});
    } else {
      add_source(sources, rest, {key});  // transformers CLIP layout under a prefix
    }
  }
  if (!unknown.empty()) {
    std::string list;
    for (size_t i = 0; i < unknown.size() && i < 20; ++i) list += "\n  " + unknown[i];
    if (unknown.size() > 20) list += str("\n  ... and ", unknown.size() - 20, " more");
    fail(str(file.path().string(), ": ", unknown.size(), " key(s) fit no component of an ", to_string(family),
             " checkpoint:", list));
  }
  return out;
}

torch::Tensor read_source(const io::safetensors::File& file, const SourceTensor& source) {
  torch::Tensor t = file.get(source.key);
  switch (source.change) {
    case TensorChange::none:
      return t;
    case TensorChange::transpose:
      DL_CHECK(t.dim() == 2, file.path().string(), ": '", source.key, "' should be 2-D, has shape ",
               t.sizes());
      return t.t();
    case TensorChange::qkv_part:
      DL_CHECK(t.dim() >= 1 && t.size(0) % 3 == 0, file.path().string(), ": '", source.key,
               "' should stack q, k and v along its first dimension, has shape ", t.sizes());
      return t.narrow(0, source.part * (t.size(0) / 3), t.size(0) / 3);
  }
  return t;
}

}  // namespace dreamlora::convert
