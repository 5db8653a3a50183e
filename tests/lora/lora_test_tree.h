// Test helper: a module tree with nn::LinearWithLora leaves at given dotted paths (plain modules in between),
// so LoRA injection and file formats can be tested on the fixtures' module paths without a full UNet.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/linear.h"

namespace dreamlora::testing {

inline std::shared_ptr<torch::nn::Module> child_or_new(torch::nn::Module& parent, const std::string& name) {
  for (const auto& item : parent.named_children())
    if (item.key() == name) return item.value();
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

template <typename M>
void add_module_at(torch::nn::Module& root, const std::string& path, M module) {
  torch::nn::Module* node = &root;
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1)
    node = child_or_new(*node, path.substr(start, dot - start)).get();
  node->register_module(path.substr(start), module);
}

inline void add_linear(torch::nn::Module& root, const std::string& path, int64_t in, int64_t out) {
  add_module_at(root, path, nn::LinearWithLora(in, out));
}

// A tree holding one linear layer for every module of a peft state dict file (lora_A [r,in], lora_B [out,r]).
inline std::shared_ptr<torch::nn::Module> tree_from_peft_file(const std::filesystem::path& peft_file) {
  auto root = std::make_shared<torch::nn::Module>();
  auto file = io::safetensors::File::open(peft_file);
  const std::string a = ".lora_A.weight", b = ".lora_B.weight";
  for (const auto& name : file.names()) {
    if (name.size() <= a.size() || name.compare(name.size() - a.size(), a.size(), a) != 0) continue;
    std::string path = name.substr(0, name.size() - a.size());
    add_linear(*root, path, file.info(name).shape[1], file.info(path + b).shape[0]);
  }
  return root;
}

}  // namespace dreamlora::testing
