// AdamW with torch.optim.AdamW's update arithmetic, written out so its whole state (moments and step
// count) is plain named tensors that checkpoints save and restore bit-exactly. The update runs as
// foreach ops over all parameters at once (torch's _multi_tensor_adamw: one launch per op on CUDA); on
// CPU libtorch runs those per tensor, so the result equals the single-tensor update bit for bit.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dreamlora::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool foreach = true;  // false: one tensor at a time (_single_tensor_adamw), the reference
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
  // Clips the global L2 norm of all gradients to max_norm (torch.nn.utils.clip_grad_norm_). Returns the
  // norm as a tensor on the parameters' device: reading it is the caller's choice (a host sync).
  torch::Tensor clip_grad_norm(double max_norm);
  // The gradients that exist, in parameter order.
  std::vector<torch::Tensor> gradients() const;

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
  void step_single_tensor(const ParamGroup& group, double lr, double bias_correction2_sqrt, double step_size);
  void step_foreach(const ParamGroup& group, double lr, double bias_correction2_sqrt, double step_size);

  std::vector<ParamGroup> groups_;
  AdamWOptions options_;
  std::map<std::string, Moments> state_;
  int64_t steps_ = 0;
};

}  // namespace dreamlora::train
