// What every optimizer of the trainer offers: a step at the scheduled LR, gradient clipping, and a
// state made of named tensors (checkpointed in optimizer.safetensors) plus scalar metadata strings
// (written exactly, so a resumed run continues bit for bit). AdamW, SGD and Prodigy implement it.
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dreamlora::train {

struct TrainConfig;

struct ParamGroup {
  std::vector<std::pair<std::string, torch::Tensor>> params;  // named, requires_grad
  double lr = 1e-4;                                           // base LR; scaled by the schedule each step
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup> groups) : groups_(std::move(groups)) {}
  virtual ~Optimizer() = default;

  // One update of every parameter that has a gradient, at lr = group.lr * lr_multiplier. Counts a step
  // even when the algorithm itself makes no update (the LR schedule follows step_count()).
  virtual void step(double lr_multiplier) = 0;
  void zero_grad();
  // Clips the global L2 norm of all gradients to max_norm (torch.nn.utils.clip_grad_norm_). Returns the
  // norm as a tensor on the parameters' device: reading it is the caller's choice (a host sync).
  torch::Tensor clip_grad_norm(double max_norm);
  // The gradients that exist, in parameter order.
  std::vector<torch::Tensor> gradients() const;

  // Named state tensors for checkpoints; made at construction and updated in place, so views of them
  // stay valid for the whole run.
  virtual std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const = 0;
  // Scalar state (besides the step count), as exact strings.
  virtual std::map<std::string, std::string> state_metadata() const { return {}; }
  int64_t step_count() const { return steps_; }
  // Restores from state_tensors() and state_metadata(); `what` (the file) is named in errors.
  void load_state(const std::map<std::string, torch::Tensor>& tensors,
                  const std::map<std::string, std::string>& metadata, int64_t step_count,
                  const std::string& what);
  void load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t step_count,
                  const std::string& what) {
    load_state(tensors, {}, step_count, what);
  }

  const std::vector<ParamGroup>& groups() const { return groups_; }

 protected:
  virtual void load_metadata(const std::map<std::string, std::string>& metadata, const std::string& what) {}
  // Copies each state tensor from `tensors` (shapes checked).
  void copy_state_tensors(const std::map<std::string, torch::Tensor>& tensors, const std::string& what);

  std::vector<ParamGroup> groups_;
  int64_t steps_ = 0;
  bool foreach_ = true;  // clip with foreach ops
};

// The optimizer --optimizer names, with its flags from config (AdamW, SGD, Prodigy).
std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& config, std::vector<ParamGroup> groups);

// Exact text of a double (hexfloat) and back, for metadata that must round-trip bit for bit.
std::string exact_double(double value);
double parse_exact_double(const std::map<std::string, std::string>& metadata, const std::string& key,
                          const std::string& what);

}  // namespace dreamlora::train
