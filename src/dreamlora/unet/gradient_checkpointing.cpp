// Reentrant gradient checkpointing: see gradient_checkpointing.h.
#include "dreamlora/unet/gradient_checkpointing.h"

#include <torch/torch.h>

namespace dreamlora::unet {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Holds the block's forward so the autograd context can keep it until backward.
struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(CheckpointedFn f) : fn(std::move(f)) {}
  CheckpointedFn fn;
};

// Inputs are laid out [inputs (n_inputs of them, all defined)..., trainable params...].
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<FnHolder> holder, int64_t n_inputs,
                               at::TensorList tensors) {
    std::vector<torch::Tensor> inputs(tensors.begin(), tensors.begin() + n_inputs);
    auto out = holder->fn(inputs);  // grad mode is off here: no graph is recorded
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["n_inputs"] = n_inputs;
    ctx->save_for_backward(tensors.vec());
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    const int64_t n_inputs = ctx->saved_data["n_inputs"].toInt();
    auto saved = ctx->get_saved_variables();

    std::vector<torch::Tensor> inputs;
    std::vector<torch::Tensor> targets;  // what we differentiate w.r.t.
    std::vector<int64_t> target_slot;    // index into saved for each target
    for (int64_t i = 0; i < static_cast<int64_t>(saved.size()); ++i) {
      const auto& t = saved[i];
      if (i < n_inputs) {
        // Detached copies cut the recomputed graph at the block boundary.
        auto x = t.detach().requires_grad_(t.requires_grad());
        inputs.push_back(x);
        if (x.requires_grad()) targets.push_back(x), target_slot.push_back(i);
      } else {
        targets.push_back(t), target_slot.push_back(i);  // the parameter itself, as fn uses it
      }
    }
    torch::Tensor out;
    {
      torch::AutoGradMode enable_grad(true);
      out = holder->fn(inputs);
    }
    // Outputs: two non-tensor args (holder, n_inputs), then one per tensor.
    variable_list result(2 + saved.size());
    if (targets.empty() || !out.requires_grad()) return result;
    auto grads = torch::autograd::grad({out}, targets, {grad_outputs[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t j = 0; j < grads.size(); ++j) result[2 + target_slot[j]] = grads[j];
    return result;
  }
};

}  // namespace

torch::Tensor checkpoint(const torch::nn::Module& owner, const CheckpointedFn& fn,
                         const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  // Only defined tensors go through autograd; fn sees the undefined ones back in their places.
  std::vector<bool> defined;
  std::vector<torch::Tensor> tensors;
  bool any = false;
  for (const auto& x : inputs) {
    defined.push_back(x.defined());
    if (!x.defined()) continue;
    tensors.push_back(x);
    any = any || x.requires_grad();
  }
  const auto n_inputs = static_cast<int64_t>(tensors.size());
  for (const auto& p : owner.parameters(/*recurse=*/true)) {
    if (p.requires_grad()) tensors.push_back(p), any = true;
  }
  if (!any) return fn(inputs);
  auto holder = c10::make_intrusive<FnHolder>([fn, defined](const std::vector<torch::Tensor>& packed) {
    std::vector<torch::Tensor> full;
    size_t j = 0;
    for (bool d : defined) full.push_back(d ? packed[j++] : torch::Tensor());
    return fn(full);
  });
  return CheckpointFunction::apply(holder, n_inputs, at::TensorList(tensors))[0];
}

}  // namespace dreamlora::unet
