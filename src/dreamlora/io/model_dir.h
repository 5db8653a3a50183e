// diffusers pipeline directories: model_index.json, component configs and weight files
// (plain, sharded *.safetensors.index.json, and variants like *.fp16.safetensors). Pickle is refused.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"

namespace dreamlora::io {

struct ComponentEntry {
  std::string name;        // "unet"
  std::string library;     // "diffusers"
  std::string class_name;  // "UNet2DConditionModel"
};

class ModelDir {
 public:
  // Reads model_index.json; throws naming the path when it is missing or malformed.
  static ModelDir open(const std::filesystem::path& root);

  const std::filesystem::path& root() const { return root_; }
  const std::string& pipeline_class() const { return pipeline_class_; }
  const std::vector<ComponentEntry>& components() const { return components_; }
  bool has_component(const std::string& name) const;
  const ComponentEntry& component(const std::string& name) const;
  std::filesystem::path component_dir(const std::string& name) const { return root_ / name; }
  bool is_sdxl() const;

 private:
  std::filesystem::path root_;
  std::string pipeline_class_;
  std::vector<ComponentEntry> components_;
};

// The safetensors files holding one component's weights, in load order. variant "" = plain files.
// Throws when only pickle files (.bin/.ckpt/.pt/.pth) are present, saying to convert to safetensors.
std::vector<std::filesystem::path> find_weight_files(const std::filesystem::path& component_dir,
                                                     const std::string& variant = "");
// All tensors of a component (sharded files merged); duplicate names across shards are an error.
std::map<std::string, torch::Tensor> load_component_weights(const std::filesystem::path& component_dir,
                                                            const std::string& variant = "");
// Throws the pickle refusal message when path names a pickle checkpoint.
void refuse_pickle(const std::filesystem::path& path);

}  // namespace dreamlora::io
