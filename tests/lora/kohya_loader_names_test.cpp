// Every kohya key dreamlora writes for SD1, SD2 and SDXL is one that ComfyUI's and AUTOMATIC1111's LoRA
// loaders map to a module of the real model. The loaders' rules are restated here as data, from:
//   ComfyUI comfy/lora.py (LORA_CLIP_MAP, model_lora_keys_clip, model_lora_keys_unet) and comfy/utils.py
//     (unet_to_diffusers, UNET_MAP_ATTENTIONS, TRANSFORMER_BLOCKS) at commit
//     00728eb20fce05955f89ef1ccf5f6167416e94cf
//   AUTOMATIC1111 extensions-builtin/Lora/networks.py (convert_diffusers_name_to_compvis,
//     assign_network_names_to_compvis_modules, load_network's fallbacks, the MultiheadAttention q/k/v/out
//     rule of network_apply_weights) at commit 873edba44bedf0086d52343f282552b3601baeb8
// and the real models' module layouts (LDM configs v1-inference.yaml, v2-inference.yaml, sd_xl_base.yaml).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "dreamlora/lora/formats.h"

namespace dreamlora::lora {
namespace {

std::string underscored(std::string s) {
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

// A real UNet's attention layout: transformer depth per (down block, resnet), middle, per (up block, resnet),
// with two resnets per down block and three per up block in all three families.
struct UNetArch {
  std::vector<std::vector<int>> down;  // [block][resnet] transformer depth (0: no attention)
  int mid;
  std::vector<std::vector<int>> up;
};
const UNetArch kSd12Unet{{{1, 1}, {1, 1}, {1, 1}, {0, 0}}, 1, {{0, 0, 0}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}}};
const UNetArch kSdxlUnet{{{0, 0}, {2, 2}, {10, 10}}, 10, {{10, 10, 10}, {2, 2, 2}, {0, 0, 0}}};

// Modules a dreamlora UNet LoRA may adapt inside each Transformer2DModel (the wide kohya set).
const std::vector<std::string> kInTransformer = {"proj_in", "proj_out"};
const std::vector<std::string> kInBlock = {"attn1.to_q",    "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                           "attn2.to_q",    "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                                           "ff.net.0.proj", "ff.net.2"};
const std::vector<std::string> kTextTargets = {"self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.out_proj", "mlp.fc1",          "mlp.fc2"};

// (diffusers path, LDM path) of every adaptable UNet module: LDM numbers input blocks 1 + 3 * block + resnet,
// output blocks 3 * block + resnet, the transformer at index 1 of each (comfy/utils.py unet_to_diffusers).
std::vector<std::pair<std::string, std::string>> unet_modules(const UNetArch& a) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const std::string& diffusers, const std::string& ldm, int depth) {
    for (const auto& m : kInTransformer) out.push_back({diffusers + "." + m, ldm + "." + m});
    for (int t = 0; t < depth; ++t)
      for (const auto& m : kInBlock) {
        const std::string b = ".transformer_blocks." + std::to_string(t) + "." + m;
        out.push_back({diffusers + b, ldm + b});
      }
  };
  for (size_t x = 0; x < a.down.size(); ++x)
    for (size_t i = 0; i < a.down[x].size(); ++i)
      if (a.down[x][i] > 0)
        add("down_blocks." + std::to_string(x) + ".attentions." + std::to_string(i),
            "input_blocks." + std::to_string(1 + 3 * x + i) + ".1", a.down[x][i]);
  add("mid_block.attentions.0", "middle_block.1", a.mid);
  for (size_t x = 0; x < a.up.size(); ++x)
    for (size_t i = 0; i < a.up[x].size(); ++i)
      if (a.up[x][i] > 0)
        add("up_blocks." + std::to_string(x) + ".attentions." + std::to_string(i),
            "output_blocks." + std::to_string(3 * x + i) + ".1", a.up[x][i]);
  return out;
}

enum class A1111Text { hf_clip, open_clip };  // SD1: transformers' CLIP; SD2 / SDXL's second: OpenCLIP

struct Family {
  std::string name;
  UNetArch unet;
  int text_layers;   // layers dreamlora adapts (diffusers' text_encoder)
  int text2_layers;  // 0: no second encoder
  A1111Text text_style;
  bool sdxl;
};

// --- ComfyUI: the set of LoRA stems its key_map holds for the model -----------------------------------
std::set<std::string> comfyui_stems(const Family& f) {
  std::set<std::string> keys;
  for (const auto& [diffusers, ldm] : unet_modules(f.unet)) {
    keys.insert("lora_unet_" + underscored(ldm));        // from diffusion_model.* state-dict keys
    keys.insert("lora_unet_" + underscored(diffusers));  // from unet_to_diffusers
  }
  const std::map<std::string, std::string> clip_map = {{"mlp.fc1", "mlp_fc1"},
                                                       {"mlp.fc2", "mlp_fc2"},
                                                       {"self_attn.k_proj", "self_attn_k_proj"},
                                                       {"self_attn.q_proj", "self_attn_q_proj"},
                                                       {"self_attn.v_proj", "self_attn_v_proj"},
                                                       {"self_attn.out_proj", "self_attn_out_proj"}};
  // clip_l (SD1, SDXL's first) and clip_h (SD2): lora_te_ and lora_te1_; clip_g beside clip_l: lora_te2_.
  for (int b = 0; b < 32; ++b)
    for (const auto& [_, lora] : clip_map) {
      const std::string tail = "text_model_encoder_layers_" + std::to_string(b) + "_" + lora;
      if (b < f.text_layers) keys.insert("lora_te_" + tail), keys.insert("lora_te1_" + tail);
      if (b < f.text2_layers) keys.insert("lora_te2_" + tail);
    }
  return keys;
}
const std::set<std::string> kComfyParts = {"lora_up.weight", "lora_down.weight", "alpha"};

// --- AUTOMATIC1111: network_layer_mapping of the LDM model, then load_network's lookups ------------------
std::set<std::string> a1111_modules(const Family& f) {
  std::set<std::string> names;
  for (const auto& [_, ldm] : unet_modules(f.unet)) names.insert("diffusion_model_" + underscored(ldm));
  auto open_clip = [&](const std::string& prefix, int layers) {
    names.insert(prefix + "model_transformer_resblocks");  // the ModuleList itself is a named module
    for (int l = 0; l < layers; ++l) {
      const std::string r = prefix + "model_transformer_resblocks_" + std::to_string(l) + "_";
      for (const char* m : {"attn", "attn_out_proj", "mlp_c_fc", "mlp_c_proj"}) names.insert(r + m);
    }
  };
  auto hf_clip = [&](const std::string& prefix, int layers) {
    for (int l = 0; l < layers; ++l)
      for (const auto& m : kTextTargets)
        names.insert(prefix + "transformer_text_model_encoder_layers_" + std::to_string(l) + "_" +
                     underscored(m));
  };
  if (f.sdxl) {  // conditioner.embedders[i].wrapped -> "<i>_" prefix
    hf_clip("0_", f.text_layers);
    open_clip("1_", f.text2_layers);
  } else if (f.text_style == A1111Text::open_clip) {
    open_clip("", f.text_layers);
  } else {
    hf_clip("", f.text_layers);
  }
  return names;
}

// convert_diffusers_name_to_compvis as (pattern, rewrite) rows; groups are 1-based like std::regex.
struct Rule {
  std::regex pattern;
  std::function<std::string(const std::smatch&, bool is_sd2)> rewrite;
};
int num(const std::smatch& m, int i) {
  return std::stoi(m[i].str());
}
std::string te_openclip(std::string rest) {
  for (auto [from, to] :
       {std::pair<const char*, const char*>{"mlp_fc1", "mlp_c_fc"}, {"mlp_fc2", "mlp_c_proj"}}) {
    if (auto at = rest.find(from); at != std::string::npos)
      return rest.replace(at, std::string(from).size(), to);
  }
  if (auto at = rest.find("self_attn"); at != std::string::npos) rest.replace(at, 9, "attn");
  return rest;
}
const std::vector<Rule>& a1111_rules() {
  static const std::vector<Rule> rules = {
      {std::regex(R"(^lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+))"),
       [](const std::smatch& m, bool) {
         return "diffusion_model_input_blocks_" + std::to_string(1 + num(m, 1) * 3 + num(m, 3)) + "_" +
                (m[2] == "attentions" ? "1" : "0") + "_" + m[4].str();
       }},
      {std::regex(R"(^lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+))"),
       [](const std::smatch& m, bool) {
         return "diffusion_model_middle_block_" +
                (m[1] == "attentions" ? std::string("1") : std::to_string(num(m, 2) * 2)) + "_" + m[3].str();
       }},
      {std::regex(R"(^lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+))"),
       [](const std::smatch& m, bool) {
         return "diffusion_model_output_blocks_" + std::to_string(num(m, 1) * 3 + num(m, 3)) + "_" +
                (m[2] == "attentions" ? "1" : "0") + "_" + m[4].str();
       }},
      {std::regex(R"(^lora_te_text_model_encoder_layers_(\d+)_(.+))"),
       [](const std::smatch& m, bool is_sd2) {
         if (is_sd2) return "model_transformer_resblocks_" + m[1].str() + "_" + te_openclip(m[2].str());
         return "transformer_text_model_encoder_layers_" + m[1].str() + "_" + m[2].str();
       }},
      {std::regex(R"(^lora_te2_text_model_encoder_layers_(\d+)_(.+))"),
       [](const std::smatch& m, bool) {
         return "1_model_transformer_resblocks_" + m[1].str() + "_" + te_openclip(m[2].str());
       }},
  };
  return rules;
}

std::string replace_first(std::string s, const std::string& from, const std::string& to) {
  if (auto at = s.find(from); at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// The module name A1111 resolves a stem to, or "" when it lands in keys_failed_to_match. `key` receives the
// name the network module is stored under (what the MultiheadAttention q/k/v/out rule looks up).
std::string a1111_resolve(const std::string& stem, const std::set<std::string>& modules, bool is_sd2,
                          std::string* key) {
  std::string k = stem;
  for (const auto& r : a1111_rules()) {
    std::smatch m;
    if (std::regex_match(stem, m, r.pattern)) {
      k = r.rewrite(m, is_sd2);
      break;
    }
  }
  *key = k;
  if (modules.count(k)) return k;
  static const std::regex x_proj(R"((.*)_([qkv]_proj)$)");
  std::smatch m;
  if (std::regex_match(k, m, x_proj) && modules.count(m[1].str())) return m[1].str();
  if (stem.find("lora_unet") != std::string::npos) {
    *key = replace_first(stem, "lora_unet", "diffusion_model");
    return modules.count(*key) ? *key : "";
  }
  if (stem.find("lora_te1_text_model") != std::string::npos) {
    for (const char* to : {"0_transformer_text_model", "transformer_text_model"}) {
      *key = replace_first(stem, "lora_te1_text_model", to);
      if (modules.count(*key)) return *key;
    }
  }
  return "";
}

// What dreamlora's trainer writes (train/outputs.cpp write_final_lora): every adaptable module.
std::map<std::string, torch::Tensor> dreamlora_kohya_file(const Family& f) {
  LoRAWeights w;
  auto module = [] { return LoRAModuleWeights{torch::zeros({1, 2}), torch::zeros({2, 1}), 1.0}; };
  for (const auto& [diffusers, _] : unet_modules(f.unet)) w.components["unet"][diffusers] = module();
  auto text = [&](const std::string& component, int layers) {
    for (int l = 0; l < layers; ++l)
      for (const auto& m : kTextTargets)
        w.components[component]["text_model.encoder.layers." + std::to_string(l) + "." + m] = module();
  };
  text("text_encoder", f.text_layers);
  if (f.text2_layers) text("text_encoder_2", f.text2_layers);
  KohyaOptions options;
  options.sdxl = f.sdxl;
  if (f.sdxl) options.ldm_layout = UNetLayout::sdxl_base();
  return to_kohya_tensors(w, options);
}

const std::vector<Family> kFamilies = {
    {"SD1", kSd12Unet, 12, 0, A1111Text::hf_clip, false},
    {"SD2", kSd12Unet, 23, 0, A1111Text::open_clip,
     false},  // diffusers' SD2 text_encoder: 23 of OpenCLIP-H's 24
    {"SDXL", kSdxlUnet, 12, 32, A1111Text::hf_clip, true},
};

TEST(KohyaLoaderNames, EveryKeyDreamloraWritesIsMappedByComfyUI) {
  for (const auto& f : kFamilies) {
    const auto stems = comfyui_stems(f);
    const auto file = dreamlora_kohya_file(f);
    ASSERT_GT(file.size(), 100u) << f.name;
    int unmapped = 0;
    for (const auto& [key, _] : file) {
      const auto dot = key.find('.');
      const bool ok = stems.count(key.substr(0, dot)) && kComfyParts.count(key.substr(dot + 1));
      if (!ok && ++unmapped <= 5)
        ADD_FAILURE() << f.name << ": ComfyUI would log 'lora key not loaded: " << key << "'";
    }
    EXPECT_EQ(unmapped, 0) << f.name << " (" << file.size() << " keys)";
  }
}

TEST(KohyaLoaderNames, EveryKeyDreamloraWritesIsMappedByAutomatic1111) {
  for (const auto& f : kFamilies) {
    const auto modules = a1111_modules(f);
    // networks.py: is_sd2 = 'model_transformer_resblocks' in network_layer_mapping (an exact-key test)
    const bool is_sd2 = modules.count("model_transformer_resblocks") > 0;
    EXPECT_EQ(is_sd2, f.name == "SD2");
    const auto file = dreamlora_kohya_file(f);
    std::map<std::string, std::set<std::string>> per_mha;  // OpenCLIP attention -> the parts the file has
    std::set<std::string> resolved;
    int unmapped = 0;
    for (const auto& [key, _] : file) {
      const std::string stem = key.substr(0, key.find('.'));
      std::string network_key;
      const std::string module = a1111_resolve(stem, modules, is_sd2, &network_key);
      if (module.empty() && ++unmapped <= 5)
        ADD_FAILURE() << f.name << ": A1111 fails to match " << key << " (as " << network_key << ")";
      resolved.insert(module);
      if (!module.empty() && module != network_key) per_mha[module].insert(network_key.substr(module.size()));
    }
    EXPECT_EQ(unmapped, 0) << f.name;
    // A MultiheadAttention gets the q/k/v update only when q, k, v and its out_proj are all in the file.
    for (const auto& [mha, parts] : per_mha) {
      EXPECT_EQ(parts, (std::set<std::string>{"_k_proj", "_q_proj", "_v_proj"})) << f.name << " " << mha;
      EXPECT_TRUE(resolved.count(mha + "_out_proj")) << f.name << " " << mha << ": no out_proj";
    }
    if (f.text_style == A1111Text::open_clip || f.sdxl) EXPECT_FALSE(per_mha.empty()) << f.name;
  }
}

// The checks above can fail: names of modules the real model lacks, or in the wrong numbering, are refused.
TEST(KohyaLoaderNames, TheRestatedRulesRefuseNamesTheLoadersWouldNotMap) {
  const Family& sdxl = kFamilies[2];
  const auto comfy = comfyui_stems(sdxl);
  const auto a1111 = a1111_modules(sdxl);
  std::string key;
  // SDXL's first down block has no attention; text_encoder_2 written with the SD1 prefix.
  for (const char* stem : {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                           "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
                           "lora_te_text_model_encoder_layers_31_mlp_fc1"}) {
    EXPECT_EQ(comfy.count(stem), 0u) << stem;
    EXPECT_EQ(a1111_resolve(stem, a1111, false, &key), "") << stem;
  }
  // SD2 without its OpenCLIP rename: transformers' names do not exist in A1111's SD2 model.
  EXPECT_EQ(
      a1111_resolve("lora_te_text_model_encoder_layers_0_mlp_fc1", a1111_modules(kFamilies[1]), false, &key),
      "");
  EXPECT_NE(
      a1111_resolve("lora_te_text_model_encoder_layers_0_mlp_fc1", a1111_modules(kFamilies[1]), true, &key),
      "");
}

TEST(KohyaLoaderNames, SdxlUnetKeysUseLdmBlockNames) {
  const auto file = dreamlora_kohya_file(kFamilies[2]);
  EXPECT_TRUE(file.count("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"));
  EXPECT_TRUE(file.count("lora_unet_middle_block_1_transformer_blocks_9_ff_net_2.alpha"));
  EXPECT_TRUE(file.count("lora_te2_text_model_encoder_layers_31_mlp_fc2.lora_up.weight"));
  for (const auto& [key, _] : file) EXPECT_EQ(key.find("down_blocks"), std::string::npos) << key;
}

}  // namespace
}  // namespace dreamlora::lora
