#include "dreamlora/train/prodigy.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

Prodigy::Prodigy(std::vector<ParamGroup> groups, ProdigyOptions options)
    : Optimizer(std::move(groups)), options_(options), d_(options.d0), d_max_(options.d0) {
  DL_CHECK(options_.d0 > 0, "--prodigy-d0 must be positive, got ", options_.d0);
  DL_CHECK(options_.eps > 0, "Prodigy: epsilon must be positive, got ", options_.eps);
  torch::NoGradGuard no_grad;
  for (const auto& g : groups_) {
    DL_CHECK(g.lr == groups_.front().lr, "Prodigy: every parameter group must have the same LR");
    for (const auto& [name, p] : g.params) {
      DL_CHECK(state_.count(name) == 0, "Prodigy: parameter '", name, "' given twice");
      // The package takes p0 at the first step; nothing changes the weights before it.
      auto flat = p.detach().flatten();
      state_[name] = {torch::zeros_like(p, torch::MemoryFormat::Contiguous),
                      torch::zeros_like(p, torch::MemoryFormat::Contiguous), torch::zeros_like(flat),
                      flat.clone()};
    }
  }
}

void Prodigy::step(double lr_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const auto& o = options_;
  const double beta3 = o.beta3 > 0 ? o.beta3 : std::sqrt(o.beta2);
  double lr = 0;
  for (const auto& g : groups_) lr = std::max(lr, g.lr * lr_multiplier);
  const double bias_correction = o.use_bias_correction
                                     ? std::pow(1.0 - std::pow(o.beta2, static_cast<double>(k_ + 1)), 0.5) /
                                           (1.0 - std::pow(o.beta1, static_cast<double>(k_ + 1)))
                                     : 1.0;
  const double d = d_;
  const double dlr = d * lr * bias_correction;
  double delta_numerator = 0.0, d_denom = 0.0;
  // First pass (prodigy.py, op for op): moments, s, and the sums that estimate d.
  for (const auto& group : groups_)
    for (const auto& [name, p] : group.params) {
      if (!p.grad().defined()) continue;
      auto grad = p.grad();
      if (o.weight_decay != 0 && !o.decouple) grad.add_(p, o.weight_decay);
      auto& st = state_.at(name);
      if (lr > 0.0) {
        const auto flat_grad = grad.flatten();
        delta_numerator += (d / o.d0) * dlr * torch::dot(flat_grad, st.p0 - p.flatten()).item<double>();
        if (o.beta1 > 0) st.exp_avg.mul_(o.beta1).add_(grad, d * (1 - o.beta1));
        st.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, d * d * (1 - o.beta2));
        if (o.safeguard_warmup)
          st.s.mul_(beta3).add_(flat_grad, (d / o.d0) * d);
        else
          st.s.mul_(beta3).add_(flat_grad, (d / o.d0) * dlr);
        d_denom += st.s.abs().sum().item<double>();
      }
    }
  // No progress possible (no gradient, or LR 0 during warm-up): the package returns without a step.
  if (d_denom == 0) return;
  const double d_numerator = d_numerator_ * beta3 + delta_numerator;
  const double d_hat = o.d_coef * d_numerator / d_denom;
  double new_d = d;
  if (new_d == o.d0) new_d = std::max(new_d, d_hat);
  d_max_ = std::max(d_max_, d_hat);
  new_d = d_max_;  // min(d_max, d * growth_rate) with growth_rate = inf
  d_numerator_ = d_numerator;
  d_ = new_d;
  for (const auto& group : groups_)
    for (const auto& [name, p] : group.params) {
      if (!p.grad().defined()) continue;
      auto& st = state_.at(name);
      auto denom = st.exp_avg_sq.sqrt().add_(new_d * o.eps);
      if (o.weight_decay != 0 && o.decouple) p.add_(p, -o.weight_decay * dlr);
      if (o.beta1 > 0)
        p.addcdiv_(st.exp_avg, denom, -dlr);
      else
        p.addcdiv_(p.grad(), denom, -dlr * new_d);
    }
  ++k_;
}

std::vector<std::pair<std::string, torch::Tensor>> Prodigy::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, st] : state_) {
    out.emplace_back(name + ".exp_avg", st.exp_avg);
    out.emplace_back(name + ".exp_avg_sq", st.exp_avg_sq);
    out.emplace_back(name + ".s", st.s);
    out.emplace_back(name + ".p0", st.p0);
  }
  return out;
}

std::map<std::string, std::string> Prodigy::state_metadata() const {
  return {{"prodigy.d", exact_double(d_)},
          {"prodigy.d_max", exact_double(d_max_)},
          {"prodigy.d_numerator", exact_double(d_numerator_)},
          {"prodigy.k", std::to_string(k_)}};
}

void Prodigy::load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) {
  d_ = parse_exact_double(metadata, "prodigy.d", what);
  d_max_ = parse_exact_double(metadata, "prodigy.d_max", what);
  d_numerator_ = parse_exact_double(metadata, "prodigy.d_numerator", what);
  k_ = static_cast<int64_t>(parse_exact_double(metadata, "prodigy.k", what));
}

}  // namespace dreamlora::train
