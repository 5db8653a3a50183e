#include "dreamlora/train/loss_scaler.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

namespace {

// The scale as text that parses back to the same float (9 significant digits round-trip a float).
std::string float_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

// Unscales grads (fp32) in place; found_inf (a 0-dim float on their device) becomes 1 when any value
// was inf or nan before unscaling. CUDA has the fused kernel GradScaler uses (all libtorch versions);
// elsewhere the same semantics op by op.
void unscale_grads(const std::vector<torch::Tensor>& grads, torch::Tensor& found_inf, float inv_scale) {
  const auto device = grads.front().device();
  if (device.is_cuda()) {
    auto inv = torch::full({}, inv_scale, grads.front().options().dtype(torch::kFloat32));
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv);
    return;
  }
  for (const auto& g : grads) {
    found_inf.logical_or_(torch::isfinite(g).logical_not().any());
    g.mul_(inv_scale);
  }
}

}  // namespace

LossScaler::LossScaler(bool enabled, LossScalerOptions options)
    : enabled_(enabled), options_(options), scale_(options.init_scale) {
  DL_CHECK(options.init_scale > 0 && std::isfinite(options.init_scale),
           "loss scale must be a positive number");
  DL_CHECK(options.growth_interval >= 1, "loss scaler growth interval must be at least 1");
}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) const {
  if (!enabled_) return loss;
  return loss.to(torch::kFloat32) * static_cast<double>(scale_);
}

bool LossScaler::unscale_and_check(const std::vector<torch::Tensor>& grads) const {
  if (!enabled_ || grads.empty()) return false;
  torch::NoGradGuard no_grad;
  for (const auto& g : grads)
    DL_CHECK(g.scalar_type() == torch::kFloat32,
             "loss scaler: gradients must be float32 (LoRA parameters stay "
             "fp32 under --mixed-precision), got ",
             g.scalar_type());
  // GradScaler.unscale_: inv_scale = float(1 / double(scale)).
  const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_));
  auto found_inf = torch::zeros({}, grads.front().options().dtype(torch::kFloat32));
  unscale_grads(grads, found_inf, inv_scale);
  return found_inf.item<float>() != 0.0f;
}

void LossScaler::update(bool found_inf) {
  if (!enabled_) return;
  // at::_amp_update_scale_ (the kernel behind GradScaler.update), on the host.
  if (found_inf) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    return;
  }
  const int64_t successful = growth_tracker_ + 1;
  if (successful == options_.growth_interval) {
    const float grown = scale_ * options_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    growth_tracker_ = successful;
  }
}

std::map<std::string, std::string> LossScaler::to_metadata() const {
  if (!enabled_) return {};
  return {{"loss_scale", float_text(scale_)}, {"loss_scale_growth_tracker", std::to_string(growth_tracker_)}};
}

void LossScaler::load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) {
  if (!enabled_) return;
  auto scale = metadata.find("loss_scale");
  auto tracker = metadata.find("loss_scale_growth_tracker");
  DL_CHECK(
      scale != metadata.end() && tracker != metadata.end(), what,
      ": no loss_scale / loss_scale_growth_tracker metadata, which --mixed-precision fp16 needs to resume");
  try {
    size_t pos = 0;
    const float s = std::stof(scale->second, &pos);
    DL_CHECK(pos == scale->second.size() && s > 0 && std::isfinite(s), "bad");
    const long long t = std::stoll(tracker->second, &pos);
    DL_CHECK(pos == tracker->second.size() && t >= 0, "bad");
    scale_ = s;
    growth_tracker_ = t;
  } catch (const std::exception&) {
    fail(str(what, ": loss_scale '", scale->second, "' / loss_scale_growth_tracker '", tracker->second,
             "': expected a positive number and a non-negative integer"));
  }
}

}  // namespace dreamlora::train
