#include "dreamlora/train/sgd.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions options)
    : Optimizer(std::move(groups)), options_(options) {
  DL_CHECK(!options_.nesterov || (options_.momentum > 0 && options_.dampening == 0),
           "--sgd-nesterov needs --sgd-momentum > 0 and --sgd-dampening 0");
  if (options_.momentum == 0) return;
  for (const auto& g : groups_)
    for (const auto& [name, p] : g.params) {
      DL_CHECK(buffers_.count(name) == 0, "SGD: parameter '", name, "' given twice");
      buffers_[name] = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    }
}

void SGD::step(double lr_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  for (const auto& group : groups_) {
    const double lr = group.lr * lr_multiplier;
    for (const auto& [name, p] : group.params) {
      if (!p.grad().defined()) continue;
      // torch.optim.SGD (_single_tensor_sgd), op for op.
      auto grad = p.grad();
      if (options_.weight_decay != 0) grad = grad.add(p, options_.weight_decay);
      if (options_.momentum != 0) {
        auto& buf = buffers_.at(name);
        if (started_.insert(name).second)
          buf.copy_(grad);
        else
          buf.mul_(options_.momentum).add_(grad, 1.0 - options_.dampening);
        grad = options_.nesterov ? grad.add(buf, options_.momentum) : buf;
      }
      p.add_(grad, -lr);
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> SGD::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, buf] : buffers_) out.emplace_back(name + ".momentum_buffer", buf);
  return out;
}

std::map<std::string, std::string> SGD::state_metadata() const {
  std::string names;
  for (const auto& n : started_) names += (names.empty() ? "" : ",") + n;
  return {{"sgd.started_buffers", names}};
}

void SGD::load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) {
  started_.clear();
  if (options_.momentum == 0) return;
  auto it = metadata.find("sgd.started_buffers");
  DL_CHECK(it != metadata.end(), what,
           ": optimizer metadata 'sgd.started_buffers' is missing (not an SGD checkpoint?)");
  size_t start = 0;
  while (start < it->second.size()) {
    size_t end = it->second.find(',', start);
    if (end == std::string::npos) end = it->second.size();
    const std::string name = it->second.substr(start, end - start);
    DL_CHECK(buffers_.count(name), what, ": optimizer metadata names an unknown parameter '", name, "'");
    started_.insert(name);
    start = end + 1;
  }
}

}  // namespace dreamlora::train
