#include "dreamlora/train/adamw.h"

#include <torch/torch.h>

#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options) : groups_(std::move(groups)), options_(options) {
  for (const auto& g : groups_)
    for (const auto& [name, p] : g.params) {
      DL_CHECK(state_.count(name) == 0, "AdamW: parameter '", name, "' given twice");
      state_[name] = {torch::zeros_like(p, torch::MemoryFormat::Contiguous),
                      torch::zeros_like(p, torch::MemoryFormat::Contiguous)};
    }
}

void AdamW::step(double lr_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bias_correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias_correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  for (const auto& group : groups_) {
    const double lr = group.lr * lr_multiplier;
    const double step_size = lr / bias_correction1;
    for (const auto& [name, p] : group.params) {
      if (!p.grad().defined()) continue;
      auto& m = state_.at(name);
      const auto& grad = p.grad();
      // Same operation order as torch.optim.AdamW (_single_tensor_adamw).
      p.mul_(1.0 - lr * options_.weight_decay);
      m.exp_avg.mul_(options_.beta1).add_(grad, 1.0 - options_.beta1);
      m.exp_avg_sq.mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
      auto denom = (m.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
      p.addcdiv_(m.exp_avg, denom, -step_size);
    }
  }
}

void AdamW::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

double AdamW::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) norms.push_back(p.grad().norm(2));
  if (norms.empty()) return 0.0;
  auto total = torch::stack(norms).norm(2);
  // clip_grad_norm_: clip_coef = max_norm / (total + 1e-6), clamped to 1, multiplied in unconditionally.
  auto coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) p.grad().mul_(coef);
  return total.item<double>();
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, m] : state_) {
    out.emplace_back(name + ".exp_avg", m.exp_avg);
    out.emplace_back(name + ".exp_avg_sq", m.exp_avg_sq);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t step_count, const std::string& what) {
  torch::NoGradGuard no_grad;
  for (auto& [name, m] : state_) {
    for (auto* pair : {&m.exp_avg, &m.exp_avg_sq}) {
      const std::string key = name + (pair == &m.exp_avg ? ".exp_avg" : ".exp_avg_sq");
      auto it = tensors.find(key);
      DL_CHECK(it != tensors.end(), what, ": optimizer state for '", key, "' is missing");
      DL_CHECK(it->second.sizes() == pair->sizes(), what, ": optimizer state '", key, "' has shape ",
               it->second.sizes(), ", expected ", pair->sizes());
      pair->copy_(it->second);
    }
  }
  steps_ = step_count;
}

}  // namespace dreamlora
