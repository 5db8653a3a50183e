// Strict state-dict loading by name: the module tree reproduces diffusers/transformers keys 1:1.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>

namespace dreamlora::nn {

// Every parameter and buffer of module, by dotted name.
std::map<std::string, torch::Tensor> named_tensors(const torch::nn::Module& module);

// Copies weights into module's parameters/buffers (cast to each parameter's dtype). Missing,
// unexpected or mis-shaped keys throw one error listing them, prefixed with `what` (e.g. the file).
// Source tensors that view a mapped safetensors file have their pages released once copied.
// Keys of LoRA adapters (containing ".lora.") are not expected in base weights and are skipped.
void load_state_dict_strict(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
                            const std::string& what);

// Sum of element counts over parameters.
int64_t count_parameters(const torch::nn::Module& module);

}  // namespace dreamlora::nn
