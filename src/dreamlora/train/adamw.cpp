#include "dreamlora/train/adamw.h"

#include <torch/torch.h>

#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer(std::move(groups)), options_(options) {
  foreach_ = options.foreach;
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
    if (options_.foreach)
      step_foreach(group, lr, bias_correction2_sqrt, step_size);
    else
      step_single_tensor(group, lr, bias_correction2_sqrt, step_size);
  }
}

void AdamW::step_single_tensor(const ParamGroup& group, double lr, double bias_correction2_sqrt,
                               double step_size) {
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

void AdamW::step_foreach(const ParamGroup& group, double lr, double bias_correction2_sqrt, double step_size) {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
  for (const auto& [name, p] : group.params) {
    if (!p.grad().defined()) continue;
    auto& m = state_.at(name);
    params.push_back(p);
    grads.push_back(p.grad());
    exp_avgs.push_back(m.exp_avg);
    exp_avg_sqs.push_back(m.exp_avg_sq);
  }
  if (params.empty()) return;
  // The single-tensor arithmetic above, op by op over the whole list (_multi_tensor_adamw).
  at::_foreach_mul_(params, 1.0 - lr * options_.weight_decay);
  at::_foreach_mul_(exp_avgs, options_.beta1);
  at::_foreach_add_(exp_avgs, grads, 1.0 - options_.beta1);
  at::_foreach_mul_(exp_avg_sqs, options_.beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - options_.beta2);
  auto denoms = at::_foreach_sqrt(exp_avg_sqs);
  at::_foreach_div_(denoms, bias_correction2_sqrt);
  at::_foreach_add_(denoms, options_.eps);
  at::_foreach_addcdiv_(params, exp_avgs, denoms, -step_size);
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, m] : state_) {
    out.emplace_back(name + ".exp_avg", m.exp_avg);
    out.emplace_back(name + ".exp_avg_sq", m.exp_avg_sq);
  }
  return out;
}

}  // namespace dreamlora::train
