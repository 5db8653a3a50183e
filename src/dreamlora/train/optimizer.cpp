#include "dreamlora/train/optimizer.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cstdlib>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/train/adamw.h"
#include "dreamlora/train/prodigy.h"
#include "dreamlora/train/sgd.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

namespace {

// tensors[i] *= factor (a 0-dim tensor on their device), without reading factor on the host.
void foreach_mul_by_tensor(const std::vector<torch::Tensor>& tensors, const torch::Tensor& factor) {
#if TORCH_VERSION_MAJOR >= 3 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(tensors, factor);
#else
  for (const auto& t : tensors) t.mul_(factor);  // _foreach_mul_(TensorList, Tensor) arrived in 2.1
#endif
}

}  // namespace

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

std::vector<torch::Tensor> Optimizer::gradients() const {
  std::vector<torch::Tensor> grads;
  for (const auto& g : groups_)
    for (const auto& [name, p] : g.params)
      if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

torch::Tensor Optimizer::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  const auto grads = gradients();
  if (grads.empty()) return torch::zeros({});
  std::vector<torch::Tensor> norms;
  if (foreach_) {
    norms = at::_foreach_norm(grads, 2);
  } else {
    for (const auto& g : grads) norms.push_back(g.norm(2));
  }
  auto total = torch::stack(norms).norm(2);
  // clip_grad_norm_: clip_coef = max_norm / (total + 1e-6), clamped to 1, multiplied in unconditionally
  // (no host-side branch on the norm, so no sync).
  auto coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
  if (foreach_) {
    foreach_mul_by_tensor(grads, coef);
  } else {
    for (const auto& g : grads) g.mul_(coef);
  }
  return total;
}

void Optimizer::copy_state_tensors(const std::map<std::string, torch::Tensor>& tensors,
                                   const std::string& what) {
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : state_tensors()) {
    auto it = tensors.find(key);
    DL_CHECK(it != tensors.end(), what, ": optimizer state for '", key, "' is missing");
    DL_CHECK(it->second.sizes() == t.sizes(), what, ": optimizer state '", key, "' has shape ",
             it->second.sizes(), ", expected ", t.sizes());
    t.copy_(it->second);
  }
}

void Optimizer::load_state(const std::map<std::string, torch::Tensor>& tensors,
                           const std::map<std::string, std::string>& metadata, int64_t step_count,
                           const std::string& what) {
  copy_state_tensors(tensors, what);
  load_metadata(metadata, what);
  steps_ = step_count;
}

std::string exact_double(double value) {
  std::ostringstream os;
  os << std::hexfloat << value;
  return os.str();
}

double parse_exact_double(const std::map<std::string, std::string>& metadata, const std::string& key,
                          const std::string& what) {
  auto it = metadata.find(key);
  DL_CHECK(it != metadata.end(), what, ": optimizer metadata '", key, "' is missing");
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  DL_CHECK(end != it->second.c_str() && *end == '\0', what, ": optimizer metadata '", key,
           "' is not a number: '", it->second, "'");
  return v;
}

std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& c, std::vector<ParamGroup> groups) {
  if (c.optimizer == "sgd")
    return std::make_unique<SGD>(
        std::move(groups), SGDOptions{c.sgd_momentum, c.sgd_dampening, c.adam_weight_decay, c.sgd_nesterov});
  if (c.optimizer == "prodigy") {
    ProdigyOptions o;
    o.beta1 = c.adam_beta1;
    o.beta2 = c.adam_beta2;
    o.beta3 = c.prodigy_beta3;
    o.eps = c.adam_epsilon;
    o.weight_decay = c.adam_weight_decay;
    o.decouple = c.prodigy_decouple;
    o.use_bias_correction = c.prodigy_use_bias_correction;
    o.safeguard_warmup = c.prodigy_safeguard_warmup;
    o.d0 = c.prodigy_d0;
    o.d_coef = c.prodigy_d_coef;
    // Prodigy adapts one step size for all parameters: like diffusers' scripts, every group gets --lr.
    for (auto& g : groups) g.lr = groups.front().lr;
    return std::make_unique<Prodigy>(std::move(groups), o);
  }
  DL_CHECK(c.optimizer == "adamw", "--optimizer must be adamw, sgd or prodigy, got '", c.optimizer, "'");
  return std::make_unique<AdamW>(
      std::move(groups), AdamWOptions{c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.adam_weight_decay});
}

}  // namespace dreamlora::train
