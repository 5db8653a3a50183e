// kohya's underscore stems <-> dotted module paths.
#include <set>

#include "dreamlora/lora/formats.h"

namespace dreamlora::lora {

namespace {

// Module names that contain "_": kohya joins path parts with "_", so these must be re-joined.
const std::set<std::string> kCompoundNames = {
    // diffusers UNet
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "conv_in", "conv_out", "conv_norm_out", "conv_shortcut", "time_emb_proj",
    "time_embedding", "linear_1", "linear_2", "add_embedding",
    // transformers CLIP
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm", "layer_norm1",
    "layer_norm2", "text_projection", "token_embedding", "position_embedding",
    // LDM / kohya SDXL UNet
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb"};

}  // namespace

std::string kohya_stem_to_path(const std::string& stem) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = stem.find('_', start);
    parts.push_back(stem.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  std::string path;
  for (size_t i = 0; i < parts.size();) {
    size_t take = 1;
    for (size_t k = 3; k >= 2; --k) {
      if (i + k > parts.size()) continue;
      std::string joined = parts[i];
      for (size_t t = 1; t < k; ++t) joined += "_" + parts[i + t];
      if (kCompoundNames.count(joined)) {
        take = k;
        break;
      }
    }
    std::string name = parts[i];
    for (size_t t = 1; t < take; ++t) name += "_" + parts[i + t];
    path += (path.empty() ? "" : ".") + name;
    i += take;
  }
  return path;
}

std::string path_to_kohya_stem(const std::string& path) {
  std::string stem = path;
  for (auto& c : stem)
    if (c == '.') c = '_';
  return stem;
}

}  // namespace dreamlora::lora
