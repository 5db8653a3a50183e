// LoRA injection into a model tree (peft-style target matching over nn::LinearWithLora layers), the list of
// adapter parameters a trainer optimises, freezing, and fuse/unfuse over a whole model.
// Conv LoRA is not supported: a target that resolves to a Conv2d (SD1's 1x1 proj_in/proj_out when
// use_linear_projection is false) is an error that says so.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/nn/linear.h"

namespace dreamlora::lora {

// Target sets. The DreamBooth LoRA scripts' defaults, and kohya's wider linear set.
extern const std::vector<std::string> kUNetDefaultTargets;  // to_q, to_k, to_v, to_out.0
extern const std::vector<std::string> kUNetWideTargets;     // + proj_in, proj_out, ff.net.0.proj, ff.net.2
extern const std::vector<std::string> kTextDefaultTargets;  // q_proj, k_proj, v_proj, out_proj
extern const std::vector<std::string> kTextWideTargets;     // + fc1, fc2

struct InjectionReport {
  std::vector<std::string> modules;           // dotted paths that received an adapter, in tree order
  std::map<std::string, int64_t> per_target;  // target name -> modules it matched
  int64_t num_tensors = 0;                    // adapter parameter tensors (2 per module)
  int64_t num_parameters = 0;                 // adapter parameter elements
  int64_t base_parameters = 0;                // all other parameter elements of the model
  std::string summary() const;                // one line for logs
};

// peft's target_modules rule for a list: the path equals the target or ends with "." + target.
bool matches_target(const std::string& module_path, const std::string& target);

// Enables an adapter on every nn::LinearWithLora whose path matches a target, in named_modules order, so the
// gaussian init of A (N(0, 1/r)) draws from gen in named_parameters order as peft does; B starts at 0.
// Errors: a target matching no module; a match that is not an nn::LinearWithLora (e.g. a Conv2d); an empty
// list.
InjectionReport inject_lora(torch::nn::Module& model, const std::vector<std::string>& targets,
                            const nn::LoRAOptions& options, at::Generator gen);

// Every nn::LinearWithLora in the model that carries an adapter, by dotted path, in tree order.
std::vector<std::pair<std::string, nn::LinearWithLora>> lora_layers(torch::nn::Module& model);

// Adapter parameters ("<path>.lora.down.weight", "<path>.lora.up.weight") in named_parameters order.
std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const torch::nn::Module& model);

// requires_grad = false everywhere except the adapter parameters. Returns the trainable count.
int64_t freeze_all_but_lora(torch::nn::Module& model);

// W += (alpha / r) * multiplier * B A on every adapted layer; unfuse restores the exact base weights.
void fuse_lora(torch::nn::Module& model, double multiplier = 1.0);
void unfuse_lora(torch::nn::Module& model);
// Removes every adapter (unfusing first).
void remove_lora(torch::nn::Module& model);
// The inference-time strength (--lora-scale) of every adapter.
void set_lora_multiplier(torch::nn::Module& model, double multiplier);

}  // namespace dreamlora::lora
