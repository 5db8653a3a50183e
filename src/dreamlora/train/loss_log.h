// The losses of the steps since the last read, kept on the device: read in one host copy every --log-every
// steps, at checkpoints and at the end, then written to metrics.jsonl one line per step.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "dreamlora/train/distributed.h"
#include "dreamlora/train/metrics.h"

namespace dreamlora::train {

class PendingLosses {
 public:
  // loss: 0-dim fp32 on the device; loss_scale: the fp16 loss scale, < 0 without one.
  void add(int64_t step, const torch::Tensor& loss, double lr, double unix_time, double loss_scale = -1);
  // Reads the pending losses, averages each over the workers (a collective: call at the same steps on every
  // worker) and records them in `metrics` (null on all but the main worker). The last loss read, if any.
  std::optional<float> flush(Distributed& dist, MetricsLog* metrics);

 private:
  struct Pending {
    int64_t step;
    torch::Tensor loss;
    double lr, unix_time, loss_scale;  // loss_scale < 0: not fp16
  };
  std::vector<Pending> pending_;
};

}  // namespace dreamlora::train
