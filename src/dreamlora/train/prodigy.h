// Prodigy (Mishchenko & Defazio 2023) with the arithmetic of the prodigyopt package (1.1.2: the
// numerator's new terms summed apart, beta1 = 0 allowed; slice_p = 1, growth_rate = inf, no FSDP): Adam whose
// step size d is estimated from the distance travelled. Its whole state -- per parameter exp_avg, exp_avg_sq,
// s and the initial weights p0; the scalars d, d_max, d_numerator and k -- is checkpointed exactly, so a
// resumed run continues bit for bit.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "dreamlora/train/optimizer.h"

namespace dreamlora::train {

struct ProdigyOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double beta3 = 0.0;  // 0: sqrt(beta2), the package's default (None)
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decouple = true;  // AdamW-style weight decay; false: added to the gradient
  bool use_bias_correction = false;
  bool safeguard_warmup = false;
  double d0 = 1e-6;
  double d_coef = 1.0;
};

class Prodigy : public Optimizer {
 public:
  // Every group must have the same LR (Prodigy adapts one step size for all).
  Prodigy(std::vector<ParamGroup> groups, ProdigyOptions options);
  void step(double lr_multiplier) override;
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const override;
  std::map<std::string, std::string> state_metadata() const override;

  double d() const { return d_; }
  int64_t k() const { return k_; }

 protected:
  void load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) override;

 private:
  struct State {
    torch::Tensor exp_avg, exp_avg_sq, s, p0;
  };
  ProdigyOptions options_;
  std::map<std::string, State> state_;
  double d_, d_max_, d_numerator_ = 0.0;
  int64_t k_ = 0;
};

}  // namespace dreamlora::train
