// SGD with torch.optim.SGD's arithmetic (momentum, dampening, Nesterov, coupled weight decay), its
// momentum buffers as named tensors so checkpoints restore them bit for bit.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "dreamlora/train/optimizer.h"

namespace dreamlora::train {

struct SGDOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;  // added to the gradient (L2), as torch's SGD does
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions options);
  void step(double lr_multiplier) override;
  // "<param>.momentum_buffer" (with momentum only).
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const override;
  // Which buffers exist yet: torch starts a buffer as a copy of the first gradient.
  std::map<std::string, std::string> state_metadata() const override;

 protected:
  void load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) override;

 private:
  SGDOptions options_;
  std::map<std::string, torch::Tensor> buffers_;
  std::set<std::string> started_;
};

}  // namespace dreamlora::train
