// Dynamic loss scaling for fp16 training, with torch.cuda.amp.GradScaler's schedule: the loss is
// multiplied by the scale before backward; the gradients are unscaled and checked before the optimizer
// step; a step whose gradients hold inf/nan is skipped and the scale halves, and after growth_interval
// good steps in a row the scale doubles. The scale lives on the host (a float, as GradScaler's), so
// scaling and unscaling cost no sync; the one device read per step is the inf/nan flag.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dreamlora::train {

struct LossScalerOptions {
  float init_scale = 65536.0f;  // 2^16
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;
};

class LossScaler {
 public:
  // A disabled scaler is the identity: scale() returns its argument and unscale finds nothing.
  explicit LossScaler(bool enabled, LossScalerOptions options = {});

  bool enabled() const { return enabled_; }
  float scale_value() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }

  // loss * scale (fp32), for backward.
  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides the gradients by the scale in place and returns true when any of them held inf or nan
  // before unscaling (then the caller skips the optimizer step). Reads one flag from the device.
  bool unscale_and_check(const std::vector<torch::Tensor>& grads) const;
  // The schedule after a step: back off (and restart the count) on overflow, grow after
  // growth_interval good steps in a row (only when the grown scale is finite).
  void update(bool found_inf);

  // Checkpoint form: string metadata of optimizer.safetensors ("loss_scale", "loss_scale_growth_tracker").
  std::map<std::string, std::string> to_metadata() const;
  // Restores from to_metadata(); the keys must be present when the scaler is enabled (what names the file).
  void load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what);

 private:
  bool enabled_;
  LossScalerOptions options_;
  float scale_;
  int64_t growth_tracker_ = 0;
};

}  // namespace dreamlora::train
