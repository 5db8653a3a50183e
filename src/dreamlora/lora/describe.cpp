// describe_lora_file: what a LoRA file is (format, base family guess, ranks, targets, size) and which of
// its keys fit no known model, for `dreamlora inspect`.
#include <torch/torch.h>

#include <algorithm>
#include <regex>
#include <set>
#include <sstream>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/lora/key_parse.h"

namespace dreamlora::lora {

namespace {

// Leaf names a target list would use for these paths.
const std::vector<std::string> kLeafTargets = {"to_q",     "to_k",          "to_v",     "to_out.0", "proj_in",
                                               "proj_out", "ff.net.0.proj", "ff.net.2", "q_proj",   "k_proj",
                                               "v_proj",   "out_proj",      "fc1",      "fc2"};

std::string leaf_of(const std::string& path) {
  for (const auto& t : kLeafTargets)
    if (path == t ||
        (path.size() > t.size() && path.compare(path.size() - t.size() - 1, t.size() + 1, "." + t) == 0))
      return t;
  auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// Width of the cross-attention context (attn2.to_k input) and of the first text encoder tell the family:
// 768 SD1, 1024 SD2, 2048 SDXL; a second text encoder, LDM names (kohya SDXL only) or a UNet whose first
// block has no attention also mean SDXL. Tiny test models fall through to the structure rule.
std::pair<ModelFamily, std::string> guess_family(const ParsedKeys& parsed) {
  bool te2 = false, first_block_attends = false, later_block_attends = false;
  int64_t context = 0, text_width = 0;
  for (const auto& [id, e] : parsed.entries) {
    const auto& [component, path] = id;
    if (component == "text_encoder_2") te2 = true;
    if (component == "unet" && path.find("attn2.to_k") != std::string::npos && e.down.defined() &&
        e.down.dim() >= 2)
      context = e.down.size(1);
    if (component == "text_encoder" && path.find("q_proj") != std::string::npos && e.down.defined() &&
        e.down.dim() >= 2)
      text_width = e.down.size(1);
    if (component == "unet" && path.rfind("down_blocks.0.attentions.", 0) == 0) first_block_attends = true;
    if (component == "unet" && path.rfind("down_blocks.", 0) == 0 &&
        path.find(".attentions.") != std::string::npos && path.rfind("down_blocks.0.", 0) != 0)
      later_block_attends = true;
  }
  if (te2) return {ModelFamily::sdxl, "has a second text encoder (text_encoder_2 / lora_te2_)"};
  if (parsed.ldm_names)
    return {ModelFamily::sdxl, "kohya UNet keys use LDM block names, as kohya's SDXL trainer writes"};
  if (context == 2048) return {ModelFamily::sdxl, "cross-attention context width 2048"};
  if (context == 1024) return {ModelFamily::sd2, "cross-attention context width 1024"};
  if (context == 768) return {ModelFamily::sd1, "cross-attention context width 768"};
  if (text_width == 1024) return {ModelFamily::sd2, "text encoder width 1024"};
  if (text_width == 768) return {ModelFamily::sd1, "text encoder width 768"};
  if (first_block_attends)
    return {ModelFamily::sd1, "UNet block 0 has attention (SD1/SD2 layout; SD1 assumed)"};
  if (later_block_attends)
    return {ModelFamily::sdxl, "UNet block 0 has no attention but later blocks do (SDXL layout)"};
  return {ModelFamily::unknown, "no key decides it"};
}

std::string join_numbers(const std::vector<double>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

}  // namespace

LoRAFileInfo describe_lora_file(const std::filesystem::path& path) {
  auto file = io::safetensors::File::open(path);
  auto tensors = file.load_all();
  LoRAFileInfo info;
  info.path = path.string();
  info.metadata = file.metadata();
  std::vector<std::string> keys;
  for (const auto& [k, t] : tensors) keys.push_back(k);
  info.format = detect_format(keys);
  ParsedKeys parsed = parse_keys(tensors, info.format, UNetLayout::sdxl_base());
  info.ldm_names = parsed.ldm_names;
  std::tie(info.family, info.family_reason) = guess_family(parsed);
  info.num_unknown_keys = static_cast<int64_t>(parsed.unknown.size());
  for (size_t i = 0; i < parsed.unknown.size() && i < 10; ++i) info.unknown_keys.push_back(parsed.unknown[i]);

  std::set<int64_t> ranks;
  std::set<double> alphas;
  std::set<std::string> targets, dtypes;
  for (const auto& [id, e] : parsed.entries) {
    info.modules[id.first] += 1;
    targets.insert(leaf_of(id.second));
    for (const auto* t : {&e.down, &e.up}) {
      if (!t->defined()) continue;
      info.num_tensors += 1;
      info.num_parameters += t->numel();
      dtypes.insert(io::safetensors::dtype_name(t->scalar_type()));
    }
    if (e.down.defined() && e.down.dim() >= 1) {
      ranks.insert(e.down.size(0));
      alphas.insert(e.alpha ? *e.alpha : static_cast<double>(e.down.size(0)));
    }
    if (e.alpha) info.num_tensors += 1;
  }
  info.ranks.assign(ranks.begin(), ranks.end());
  info.alphas.assign(alphas.begin(), alphas.end());
  info.targets.assign(targets.begin(), targets.end());
  for (const auto& d : dtypes) info.dtype += (info.dtype.empty() ? "" : ",") + d;
  return info;
}

std::string LoRAFileInfo::to_string() const {
  std::ostringstream os;
  os << "LoRA file " << path << "\n";
  os << "  format:     " << lora::to_string(format) << (ldm_names ? " (LDM block names)" : "") << "\n";
  os << "  base model: " << lora::to_string(family) << " (" << family_reason << ")\n";
  os << "  modules:   ";
  for (const auto& [c, n] : modules) os << " " << c << " " << n;
  os << "\n  ranks:      ";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "\n  alphas:     " << join_numbers(alphas) << "\n  targets:    ";
  for (size_t i = 0; i < targets.size(); ++i) os << (i ? ", " : "") << targets[i];
  os << "\n  parameters: " << num_parameters << " in " << num_tensors << " tensors (" << dtype << ")\n";
  if (num_unknown_keys > 0) {
    os << "  " << num_unknown_keys << " keys fit no known model, first:\n";
    for (const auto& k : unknown_keys) os << "    " << k << "\n";
  }
  return os.str();
}

}  // namespace dreamlora::lora
