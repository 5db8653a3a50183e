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

#include "dreamlora/train/optimizer.h"

namespace dreamlora::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool foreach = true;  // false: one tensor at a time (_single_tensor_adamw), the reference
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options);

  void step(double lr_multiplier) override;
  // "<param>.exp_avg", "<param>.exp_avg_sq" tensors, for checkpoints.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const override;

 private:
  struct Moments {
    torch::Tensor exp_avg, exp_avg_sq;
  };
  void step_single_tensor(const ParamGroup& group, double lr, double bias_correction2_sqrt, double step_size);
  void step_foreach(const ParamGroup& group, double lr, double bias_correction2_sqrt, double step_size);

  AdamWOptions options_;
  std::map<std::string, Moments> state_;
};

}  // namespace dreamlora::train
