// Recognising LoRA keys of every supported layout; the suffix and prefix tables below are the data.
#include "dreamlora/lora/key_parse.h"

#include <torch/torch.h>

#include <regex>

#include "dreamlora/common/error.h"
#include "dreamlora/common/strings.h"

namespace dreamlora::lora {

namespace {

enum class Role { down, up, alpha };

struct Suffix {
  const char* text;
  Role role;
};
// diffusers DreamBooth scripts (UNet, text encoders), older diffusers text encoder form, peft.
const std::vector<Suffix> kDottedSuffixes = {{".lora.down.weight", Role::down},
                                             {".lora.up.weight", Role::up},
                                             {".lora_linear_layer.down.weight", Role::down},
                                             {".lora_linear_layer.up.weight", Role::up},
                                             {".lora_A.default.weight", Role::down},
                                             {".lora_B.default.weight", Role::up},
                                             {".lora_A.weight", Role::down},
                                             {".lora_B.weight", Role::up},
                                             {".alpha", Role::alpha}};
const std::vector<Suffix> kKohyaSuffixes = {
    {".lora_down.weight", Role::down}, {".lora_up.weight", Role::up}, {".alpha", Role::alpha}};
// Longest first: "lora_te1_" must win over "lora_te_".
const std::vector<std::pair<std::string, std::string>> kKohyaPrefixes = {{"lora_unet_", "unet"},
                                                                         {"lora_te1_", "text_encoder"},
                                                                         {"lora_te2_", "text_encoder_2"},
                                                                         {"lora_te_", "text_encoder"}};
const std::vector<std::string> kComponents = {"text_encoder_2", "text_encoder", "unet"};
const std::string kPeftWrapper = "base_model.model.";

struct KeyParts {
  std::string component, path;
  Role role;
};

std::optional<KeyParts> parse_kohya(const std::string& key, const UNetLayout& layout, bool* ldm) {
  for (const auto& [prefix, component] : kKohyaPrefixes) {
    if (!starts_with(key, prefix)) continue;
    for (const auto& sfx : kKohyaSuffixes) {
      if (!ends_with(key, sfx.text)) continue;
      std::string stem = key.substr(prefix.size(), key.size() - prefix.size() - std::string(sfx.text).size());
      std::string path = kohya_stem_to_path(stem);
      if (component == "unet" && (starts_with(path, "input_blocks.") || starts_with(path, "middle_block.") ||
                                  starts_with(path, "output_blocks."))) {
        try {
          path = ldm_to_diffusers(path, layout);
        } catch (const Error&) {
          return std::nullopt;
        }
        *ldm = true;
      }
      return KeyParts{component, path, sfx.role};
    }
    return std::nullopt;
  }
  return std::nullopt;
}

// transformers 5 dropped CLIPTextModel's `text_model` submodule, so files saved with it name text-encoder
// modules "encoder.layers.N..." where transformers 4 wrote "text_model.encoder.layers.N...": both are read.
std::string with_text_model_prefix(const std::string& path) {
  return starts_with(path, "encoder.layers.") ? "text_model." + path : path;
}

std::optional<KeyParts> parse_dotted(std::string key) {
  if (starts_with(key, kPeftWrapper)) key = key.substr(kPeftWrapper.size());
  for (const auto& sfx : kDottedSuffixes) {
    if (!ends_with(key, sfx.text)) continue;
    std::string rest = key.substr(0, key.size() - std::string(sfx.text).size());
    for (const auto& c : kComponents) {
      if (!starts_with(rest, c + ".")) continue;
      const std::string path = rest.substr(c.size() + 1);
      return KeyParts{c, c == "unet" ? path : with_text_model_prefix(path), sfx.role};
    }
    // peft state dicts of one model carry no component prefix.
    const bool text = starts_with(rest, "text_model.") || starts_with(rest, "encoder.layers.");
    return KeyParts{text ? "text_encoder" : "unet", text ? with_text_model_prefix(rest) : rest, sfx.role};
  }
  return std::nullopt;
}

}  // namespace

LoRAFormat detect_format(const std::vector<std::string>& keys) {
  int64_t kohya = 0, peft = 0, diffusers = 0;
  for (const auto& k : keys) {
    if (starts_with(k, "lora_unet_") || starts_with(k, "lora_te")) {
      ++kohya;
    } else if (k.find(".lora_A.") != std::string::npos || k.find(".lora_B.") != std::string::npos) {
      ++peft;
    } else if (k.find(".lora.down.") != std::string::npos || k.find(".lora.up.") != std::string::npos ||
               k.find(".lora_linear_layer.") != std::string::npos) {
      ++diffusers;
    }
  }
  if (kohya == 0 && peft == 0 && diffusers == 0) return LoRAFormat::unknown;
  if (kohya >= peft && kohya >= diffusers) return LoRAFormat::kohya;
  return peft > diffusers ? LoRAFormat::peft : LoRAFormat::diffusers;
}

bool is_known_module(const std::string& component, const std::string& path) {
  static const std::regex unet_re(
      R"(^((down_blocks|up_blocks)\.\d+|mid_block)\.(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.)"
      R"((attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))|resnets\.\d+\.)"
      R"((conv1|conv2|conv_shortcut|time_emb_proj)|(downsamplers|upsamplers)\.0\.conv)$|)"
      R"(^(time_embedding|add_embedding)\.linear_[12]$|^conv_(in|out)$)");
  static const std::regex text_re(
      R"(^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$|^text_projection$)");
  if (component == "unet") return std::regex_match(path, unet_re);
  if (component == "text_encoder" || component == "text_encoder_2") return std::regex_match(path, text_re);
  return false;
}

ParsedKeys parse_keys(const std::map<std::string, torch::Tensor>& tensors, LoRAFormat format,
                      const UNetLayout& layout) {
  ParsedKeys out;
  for (const auto& [key, tensor] : tensors) {
    bool ldm = false;
    std::optional<KeyParts> parts = parse_kohya(key, layout, &ldm);
    if (!parts) parts = parse_dotted(key);
    if (!parts || !is_known_module(parts->component, parts->path)) {
      out.unknown.push_back(key);
      continue;
    }
    out.ldm_names |= ldm;
    auto& entry = out.entries[{parts->component, parts->path}];
    switch (parts->role) {
      case Role::down:
        entry.down = tensor;
        break;
      case Role::up:
        entry.up = tensor;
        break;
      case Role::alpha:
        DL_CHECK(tensor.numel() == 1, "LoRA key '", key, "' should hold one alpha value, has ",
                 tensor.numel());
        entry.alpha = tensor.to(torch::kFloat64).item<double>();
        break;
    }
  }
  return out;
}

LoRAWeights assemble(const ParsedKeys& parsed, const std::map<std::string, std::string>& metadata,
                     LoRAFormat format, const std::string& what) {
  std::optional<double> meta_alpha;
  auto a = metadata.find("dreamlora.alpha");
  auto baked = metadata.find("dreamlora.alpha_in_weights");
  if (a != metadata.end() && baked != metadata.end() && baked->second == "false")
    meta_alpha = std::stod(a->second);
  auto as_linear = [&](torch::Tensor t, const std::string& name) {
    if (t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1) t = t.flatten(1);
    DL_CHECK(t.dim() == 2, what, ": LoRA weight of '", name, "' has shape ", t.sizes(),
             "; only linear and 1x1-conv LoRA are supported");
    return t;
  };
  LoRAWeights out;
  for (const auto& [id, e] : parsed.entries) {
    const std::string name = id.first + "." + id.second;
    DL_CHECK(e.down.defined() && e.up.defined(), what, ": LoRA module '", name, "' has only its ",
             e.down.defined() ? "down (A)" : "up (B)", " weight");
    LoRAModuleWeights w;
    w.down = as_linear(e.down, name);
    w.up = as_linear(e.up, name);
    DL_CHECK(w.up.size(1) == w.down.size(0), what, ": LoRA module '", name, "' has down ", w.down.sizes(),
             " and up ", w.up.sizes(), " of different ranks");
    w.alpha = e.alpha ? *e.alpha : (meta_alpha ? *meta_alpha : static_cast<double>(w.rank()));
    out.components[id.first][id.second] = w;
  }
  return out;
}

}  // namespace dreamlora::lora
