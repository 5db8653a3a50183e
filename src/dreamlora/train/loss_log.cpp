#include "dreamlora/train/loss_log.h"

#include <torch/torch.h>

namespace dreamlora::train {

void PendingLosses::add(int64_t step, const torch::Tensor& loss, double lr, double unix_time,
                        double loss_scale) {
  pending_.push_back({step, loss, lr, unix_time, loss_scale});
}

std::optional<float> PendingLosses::flush(Distributed& dist, MetricsLog* metrics) {
  if (pending_.empty()) return std::nullopt;
  std::vector<torch::Tensor> losses;
  for (const auto& p : pending_) losses.push_back(p.loss);
  const auto host = torch::stack(losses).to(torch::kCPU, torch::kFloat64);
  const double* values = host.data_ptr<double>();
  float last = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    const auto& p = pending_[i];
    last = static_cast<float>(dist.mean(values[i]));
    if (metrics) metrics->record(p.step, last, p.lr, p.unix_time, p.loss_scale);
  }
  pending_.clear();
  return last;
}

}  // namespace dreamlora::train
