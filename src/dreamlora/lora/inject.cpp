// LoRA injection, adapter parameter listing, freezing and fuse/unfuse over a model tree.
#include "dreamlora/lora/inject.h"

#include <torch/nn/modules/conv.h>

#include <set>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/common/strings.h"

namespace dreamlora::lora {

const std::vector<std::string> kUNetDefaultTargets = {"to_q", "to_k", "to_v", "to_out.0"};
const std::vector<std::string> kUNetWideTargets = {"to_q",    "to_k",     "to_v",          "to_out.0",
                                                   "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"};
const std::vector<std::string> kTextDefaultTargets = {"q_proj", "k_proj", "v_proj", "out_proj"};
const std::vector<std::string> kTextWideTargets = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};

namespace {

// Paths inside an adapter ("x.lora", "x.lora.down") are never targets themselves.
bool inside_adapter(const std::string& path) {
  return path == "lora" || ends_with(path, ".lora") || path.find(".lora.") != std::string::npos ||
         path.rfind("lora.", 0) == 0;
}

std::string module_kind(const torch::nn::Module& m) {
  if (dynamic_cast<const torch::nn::Conv2dImpl*>(&m)) return "Conv2d";
  return m.name();
}

}  // namespace

bool matches_target(const std::string& module_path, const std::string& target) {
  return module_path == target || ends_with(module_path, "." + target);
}

std::string InjectionReport::summary() const {
  std::ostringstream os;
  os << "LoRA on " << modules.size() << " modules (";
  bool first = true;
  for (const auto& [target, n] : per_target) {
    os << (first ? "" : ", ") << target << ": " << n;
    first = false;
  }
  os << "), " << num_parameters << " trainable parameters in " << num_tensors << " tensors, "
     << base_parameters << " frozen";
  return os.str();
}

InjectionReport inject_lora(torch::nn::Module& model, const std::vector<std::string>& targets,
                            const nn::LoRAOptions& options, at::Generator gen) {
  DL_CHECK(!targets.empty(), "inject_lora: the list of LoRA target modules is empty");
  DL_CHECK(options.rank > 0, "LoRA rank must be positive, got ", options.rank);
  InjectionReport report;
  for (const auto& t : targets) report.per_target[t] = 0;
  std::vector<std::pair<std::string, nn::LinearWithLora>> chosen;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& path = item.key();
    if (inside_adapter(path)) continue;
    std::vector<std::string> hits;
    for (const auto& t : targets)
      if (matches_target(path, t)) hits.push_back(t);
    if (hits.empty()) continue;
    auto linear = std::dynamic_pointer_cast<nn::LinearWithLoraImpl>(item.value());
    if (!linear) {
      std::string kind = module_kind(*item.value());
      fail(str("LoRA target '", hits.front(), "' matches module '", path, "', a ", kind,
               ", but LoRA adapters are supported on linear layers only",
               kind == "Conv2d"
                   ? " (conv LoRA is not implemented; SD1's proj_in/proj_out are 1x1 convs when "
                     "the UNet config has use_linear_projection=false: drop them from the targets)"
                   : ""));
    }
    DL_CHECK(!linear->has_lora(), "inject_lora: module '", path, "' already has a LoRA adapter");
    for (const auto& t : hits) report.per_target[t] += 1;
    chosen.emplace_back(path, nn::LinearWithLora(linear));
  }
  for (const auto& [t, n] : report.per_target)
    DL_CHECK(n > 0, "LoRA target '", t,
             "' matches no module of the model (a target is a module name or dotted "
             "suffix such as to_q or to_out.0)");
  for (auto& [path, linear] : chosen) {
    if (gen.defined())
      linear->enable_lora(options, gen);
    else
      linear->enable_lora(options);
    report.modules.push_back(path);
  }
  for (const auto& [name, p] : lora_parameters(model)) {
    report.num_tensors += 1;
    report.num_parameters += p.numel();
  }
  int64_t total = 0;
  for (const auto& p : model.parameters()) total += p.numel();
  report.base_parameters = total - report.num_parameters;
  return report;
}

std::vector<std::pair<std::string, nn::LinearWithLora>> lora_layers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, nn::LinearWithLora>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    auto linear = std::dynamic_pointer_cast<nn::LinearWithLoraImpl>(item.value());
    if (linear && linear->has_lora()) out.emplace_back(item.key(), nn::LinearWithLora(linear));
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (name.find("lora.") == 0 || name.find(".lora.") != std::string::npos)
      out.emplace_back(name, item.value());
  }
  return out;
}

int64_t freeze_all_but_lora(torch::nn::Module& model) {
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  int64_t trainable = 0;
  for (auto& [name, p] : lora_parameters(model)) {
    p.set_requires_grad(true);
    trainable += p.numel();
  }
  return trainable;
}

void fuse_lora(torch::nn::Module& model, double multiplier) {
  for (auto& [path, linear] : lora_layers(model)) linear->fuse_lora(multiplier);
}

void unfuse_lora(torch::nn::Module& model) {
  for (auto& [path, linear] : lora_layers(model)) linear->unfuse_lora();
}

void remove_lora(torch::nn::Module& model) {
  for (auto& [path, linear] : lora_layers(model)) linear->remove_lora();
}

void set_lora_multiplier(torch::nn::Module& model, double multiplier) {
  for (auto& [path, linear] : lora_layers(model)) linear->lora->multiplier = multiplier;
}

}  // namespace dreamlora::lora
