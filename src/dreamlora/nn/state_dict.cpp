#include "dreamlora/nn/state_dict.h"

#include <torch/torch.h>

#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"

namespace dreamlora::nn {

namespace {
bool is_lora_key(const std::string& key) {
  return key.find(".lora.") != std::string::npos || key.rfind("lora.", 0) == 0;
}

std::string join_first(const std::vector<std::string>& items, size_t limit) {
  std::ostringstream os;
  for (size_t i = 0; i < items.size() && i < limit; ++i) os << (i ? ", " : "") << items[i];
  if (items.size() > limit) os << ", ... (" << items.size() << " in all)";
  return os.str();
}
}  // namespace

std::map<std::string, torch::Tensor> named_tensors(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : module.named_parameters(true)) out.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) out.emplace(b.key(), b.value());
  return out;
}

void load_state_dict_strict(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
                            const std::string& what) {
  auto own = named_tensors(module);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, tensor] : own) {
    if (is_lora_key(name)) continue;
    auto it = weights.find(name);
    if (it == weights.end())
      missing.push_back(name);
    else if (it->second.sizes() != tensor.sizes())
      mismatched.push_back(str(name, " (file ", it->second.sizes(), ", model ", tensor.sizes(), ")"));
  }
  for (const auto& [name, tensor] : weights)
    if (own.count(name) == 0) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream os;
    os << what << ": weights do not match the model built from its config.json.";
    if (!missing.empty()) os << "\n  missing keys: " << join_first(missing, 10);
    if (!unexpected.empty()) os << "\n  unexpected keys: " << join_first(unexpected, 10);
    if (!mismatched.empty()) os << "\n  shape mismatches: " << join_first(mismatched, 10);
    fail(os.str());
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : own) {
    if (is_lora_key(name)) continue;
    const auto& source = weights.at(name);
    tensor.copy_(source);
    io::safetensors::release_mapped_pages(source);
  }
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(true)) n += p.numel();
  return n;
}

}  // namespace dreamlora::nn
