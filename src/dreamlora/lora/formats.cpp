// LoRA key layouts as data (diffusers DreamBooth scripts, peft, kohya) and the conversions between a
// file's tensors, the canonical LoRAWeights, and a model's adapters.
#include "dreamlora/lora/formats.h"

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/lora/key_parse.h"
#include "dreamlora/nn/linear.h"

namespace dreamlora::lora {

namespace {

// diffusers file: "<component>.<path><suffix>"; the UNet and text encoders use different suffixes.
struct DiffusersSuffixes {
  const char* down;
  const char* up;
};
DiffusersSuffixes diffusers_suffixes(const std::string& component) {
  if (component == "unet") return {".lora.down.weight", ".lora.up.weight"};
  return {".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"};
}

// kohya prefix per component; SDXL numbers its two text encoders.
std::string kohya_prefix(const std::string& component, bool sdxl) {
  if (component == "unet") return "lora_unet_";
  if (component == "text_encoder") return sdxl ? "lora_te1_" : "lora_te_";
  if (component == "text_encoder_2") return "lora_te2_";
  fail(str("kohya LoRA format has no prefix for component '", component, "'"));
}

bool uniform(const LoRAWeights& w, int64_t* rank, double* alpha) {
  bool first = true, same = true;
  for (const auto& [c, modules] : w.components)
    for (const auto& [p, m] : modules) {
      if (first) {
        *rank = m.rank();
        *alpha = m.alpha;
        first = false;
      } else if (m.rank() != *rank || m.alpha != *alpha) {
        same = false;
      }
    }
  return same && !first;
}

std::string format_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::map<std::string, std::string> our_metadata(const LoRAWeights& w, const SaveOptions& opt) {
  int64_t rank = 0;
  double alpha = 0;
  uniform(w, &rank, &alpha);
  std::map<std::string, std::string> md;
  md["dreamlora.rank"] = std::to_string(opt.rank > 0 ? opt.rank : rank);
  md["dreamlora.alpha"] = format_number(opt.alpha > 0 ? opt.alpha : alpha);
  std::string targets;
  for (const auto& t : opt.targets) targets += (targets.empty() ? "" : ",") + t;
  md["dreamlora.targets"] = targets;
  return md;
}

torch::Tensor cpu_contiguous(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU).contiguous();
}

}  // namespace

int64_t LoRAWeights::num_modules() const {
  int64_t n = 0;
  for (const auto& [c, modules] : components) n += static_cast<int64_t>(modules.size());
  return n;
}

int64_t LoRAWeights::num_parameters() const {
  int64_t n = 0;
  for (const auto& [c, modules] : components)
    for (const auto& [p, m] : modules) n += m.down.numel() + m.up.numel();
  return n;
}

std::string to_string(LoRAFormat format) {
  switch (format) {
    case LoRAFormat::diffusers:
      return "diffusers";
    case LoRAFormat::peft:
      return "peft";
    case LoRAFormat::kohya:
      return "kohya";
    default:
      return "unknown";
  }
}

std::string to_string(ModelFamily family) {
  switch (family) {
    case ModelFamily::sd1:
      return "SD1";
    case ModelFamily::sd2:
      return "SD2";
    case ModelFamily::sdxl:
      return "SDXL";
    default:
      return "unknown";
  }
}

LoRAModules collect_lora(torch::nn::Module& model) {
  return collect_lora(lora_layers(model));
}

LoRAModules collect_lora(const std::vector<std::pair<std::string, nn::LinearWithLora>>& layers) {
  LoRAModules out;
  for (const auto& [path, linear] : layers) {
    LoRAModuleWeights w;
    w.down = linear->lora->down->weight.detach().clone();
    w.up = linear->lora->up->weight.detach().clone();
    w.alpha = linear->lora->options.alpha;
    out[path] = w;
  }
  return out;
}

void apply_lora(torch::nn::Module& model, const LoRAModules& modules, const std::string& what) {
  std::map<std::string, std::shared_ptr<torch::nn::Module>> by_path;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) by_path[item.key()] = item.value();
  std::vector<std::string> problems;
  std::vector<std::pair<std::shared_ptr<nn::LinearWithLoraImpl>, const LoRAModuleWeights*>> plan;
  for (const auto& [path, w] : modules) {
    auto it = by_path.find(path);
    if (it == by_path.end()) {
      problems.push_back(path + " (no such module)");
      continue;
    }
    auto linear = std::dynamic_pointer_cast<nn::LinearWithLoraImpl>(it->second);
    if (!linear) {
      problems.push_back(path + " (not a linear layer: conv LoRA is not supported)");
      continue;
    }
    if (w.down.dim() != 2 || w.up.dim() != 2 || w.down.size(1) != linear->in_features ||
        w.up.size(0) != linear->out_features || w.up.size(1) != w.rank()) {
      problems.push_back(str(path, " (down ", w.down.sizes(), ", up ", w.up.sizes(), " do not fit a [",
                             linear->out_features, ", ", linear->in_features, "] layer)"));
      continue;
    }
    if (linear->has_lora() && linear->lora->options.rank != w.rank()) {
      problems.push_back(str(path, " (rank ", w.rank(), " but the model's adapter has rank ",
                             linear->lora->options.rank, ")"));
      continue;
    }
    plan.emplace_back(linear, &w);
  }
  if (!problems.empty()) {
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 20; ++i) list += "\n  " + problems[i];
    if (problems.size() > 20) list += str("\n  ... and ", problems.size() - 20, " more");
    fail(str(what, ": ", problems.size(), " LoRA modules do not fit the model:", list));
  }
  torch::NoGradGuard no_grad;
  for (auto& [linear, w] : plan) {
    if (!linear->has_lora()) {
      nn::LoRAOptions options;
      options.rank = w->rank();
      options.alpha = w->alpha;
      linear->enable_lora(options);
    }
    linear->lora->options.alpha = w->alpha;
    auto& down = linear->lora->down->weight;
    auto& up = linear->lora->up->weight;
    down.copy_(w->down.to(down.device(), down.scalar_type()));
    up.copy_(w->up.to(up.device(), up.scalar_type()));
  }
}

std::map<std::string, torch::Tensor> to_diffusers_tensors(const LoRAWeights& weights,
                                                          bool bake_alpha_into_up) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [component, modules] : weights.components) {
    auto sfx = diffusers_suffixes(component);
    for (const auto& [path, m] : modules) {
      double scale = nn::lora_scale(m.alpha, m.rank());
      torch::Tensor up = m.up;
      if (bake_alpha_into_up && scale != 1.0) up = up * scale;
      out[component + "." + path + sfx.down] = cpu_contiguous(m.down);
      out[component + "." + path + sfx.up] = cpu_contiguous(up);
    }
  }
  return out;
}

void save_diffusers(const std::filesystem::path& path, const LoRAWeights& weights,
                    const SaveOptions& options) {
  auto md = our_metadata(weights, options);
  md["format"] = "pt";
  int64_t rank = 0;
  double alpha = 0;
  bool same = uniform(weights, &rank, &alpha);
  bool any_scaled = false;
  for (const auto& [c, modules] : weights.components)
    for (const auto& [p, m] : modules) any_scaled |= nn::lora_scale(m.alpha, m.rank()) != 1.0;
  DL_CHECK(
      options.bake_alpha_into_up || !any_scaled || same, "writing ", path.string(),
      ": LoRA modules differ in rank/alpha, which the diffusers format cannot record unless alpha is baked "
      "into the up weights");
  md["dreamlora.alpha_in_weights"] = (options.bake_alpha_into_up && any_scaled) ? "true" : "false";
  io::safetensors::save(path, to_diffusers_tensors(weights, options.bake_alpha_into_up), md);
}

std::map<std::string, torch::Tensor> to_kohya_tensors(const LoRAWeights& weights,
                                                      const KohyaOptions& options) {
  bool sdxl = options.sdxl || weights.components.count("text_encoder_2") > 0;
  std::map<std::string, torch::Tensor> out;
  for (const auto& [component, modules] : weights.components) {
    std::string prefix = kohya_prefix(component, sdxl);
    for (const auto& [path, m] : modules) {
      std::string named = path;
      if (component == "unet" && options.ldm_layout) named = diffusers_to_ldm(path, *options.ldm_layout);
      std::string stem = prefix + path_to_kohya_stem(named);
      out[stem + ".lora_down.weight"] = cpu_contiguous(m.down);
      out[stem + ".lora_up.weight"] = cpu_contiguous(m.up);
      bool integral = std::floor(m.alpha) == m.alpha;
      auto dtype =
          (options.alpha_dtype == torch::kInt64 && !integral) ? torch::kFloat32 : options.alpha_dtype;
      out[stem + ".alpha"] = dtype == torch::kInt64
                                 ? torch::scalar_tensor(static_cast<int64_t>(m.alpha), torch::kInt64)
                                 : torch::scalar_tensor(m.alpha, dtype);
    }
  }
  return out;
}

void save_kohya(const std::filesystem::path& path, const LoRAWeights& weights, const KohyaOptions& options,
                const SaveOptions& save) {
  auto md = our_metadata(weights, save);
  // kohya's training metadata keys, read by A1111/ComfyUI front-ends to show rank and alpha.
  md["ss_network_module"] = "networks.lora";
  md["ss_network_dim"] = md["dreamlora.rank"];
  md["ss_network_alpha"] = md["dreamlora.alpha"];
  io::safetensors::save(path, to_kohya_tensors(weights, options), md);
}

LoRAWeights load_lora_file(const std::filesystem::path& path, const std::optional<UNetLayout>& layout) {
  auto file = io::safetensors::File::open(path);
  return parse_lora_tensors(file.load_all(), file.metadata(), path.string(), layout);
}

LoRAWeights parse_lora_tensors(const std::map<std::string, torch::Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata, const std::string& what,
                               const std::optional<UNetLayout>& layout) {
  std::vector<std::string> keys;
  for (const auto& [k, t] : tensors) keys.push_back(k);
  LoRAFormat format = detect_format(keys);
  DL_CHECK(format != LoRAFormat::unknown, what,
           ": not a LoRA file in a known format (diffusers, peft or kohya); ", "first key: '",
           keys.empty() ? std::string("<none>") : keys.front(), "'");
  ParsedKeys parsed = parse_keys(tensors, format, layout.value_or(UNetLayout::sdxl_base()));
  if (!parsed.unknown.empty()) {
    std::string list;
    for (size_t i = 0; i < parsed.unknown.size() && i < 10; ++i) list += "\n  " + parsed.unknown[i];
    fail(str(what, ": ", parsed.unknown.size(), " keys fit no known LoRA layout (", to_string(format),
             " format):", list));
  }
  LoRAWeights out = assemble(parsed, metadata, format, what);
  out.metadata = metadata;
  return out;
}

}  // namespace dreamlora::lora
