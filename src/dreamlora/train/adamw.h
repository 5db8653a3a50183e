// AdamW with torch.optim.AdamW's single-tensor update, written out so its whole state (moments and step
// count per parameter) is plain named tensors that checkpoints save and restore bit-exactly.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dreamlora {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

struct ParamGroup {
  std::vector<std::pair<std::string, torch::Tensor>> params;  // named, requires_grad
  double lr = 1e-4;                                            // base LR; scaled by the schedule each step
};

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options);

  // One update of every parameter that has a gradient, at lr = group.lr * lr_multiplier.
  void step(double lr_multiplier);
  void zero_grad();
  // Clips the global L2 norm of all gradients to max_norm (torch.nn.utils.clip_grad_norm_); returns the norm.
  double clip_grad_norm(double max_norm);

  // "<param>.exp_avg", "<param>.exp_avg_sq" tensors and the step count, for checkpoints.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  int64_t step_count() const { return steps_; }
  // Restores from state_tensors(); every parameter must be present with the right shape.
  void load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t step_count, const std::string& what);

  const std::vector<ParamGroup>& groups() const { return groups_; }

 private:
  struct Moments {
    torch::Tensor exp_avg, exp_avg_sq;
  };
  std::vector<ParamGroup> groups_;
  AdamWOptions options_;
  std::map<std::string, Moments> state_;
  int64_t steps_ = 0;
};

}  // namespace dreamlora
