// VAE and OpenCLIP name tables of the original checkpoint layout, after diffusers'
// scripts/convert_diffusers_to_original_sdxl.py (vae_conversion_map, textenc_conversion_lst) and
// loaders/single_file_utils.py (convert_ldm_vae_checkpoint, convert_open_clip_checkpoint).
#include <regex>
#include <utility>

#include "dreamlora/common/error.h"
#include "dreamlora/convert/ldm_names.h"

namespace dreamlora::convert {

namespace {

using NamePairs = std::vector<std::pair<std::string, std::string>>;  // (LDM, diffusers)

// Children of a VAE resnet and of the VAE mid-block attention.
const NamePairs kVaeResnetChildren = {{"nin_shortcut", "conv_shortcut"}};
const NamePairs kVaeAttentionChildren = {
    {"norm", "group_norm"}, {"q", "to_q"}, {"k", "to_k"}, {"v", "to_v"}, {"proj_out", "to_out.0"}};

// OpenCLIP name <-> transformers name, whole names and (for the resblocks) parts of the rest.
const NamePairs kOpenClipWholeNames = {
    {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
    {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
    {"ln_final.weight", "text_model.final_layer_norm.weight"},
    {"ln_final.bias", "text_model.final_layer_norm.bias"},
};
const NamePairs kOpenClipLayerChildren = {{"ln_1", "layer_norm1"},
                                          {"ln_2", "layer_norm2"},
                                          {"mlp.c_fc", "mlp.fc1"},
                                          {"mlp.c_proj", "mlp.fc2"},
                                          {"attn.out_proj", "self_attn.out_proj"}};
const char* const kQkv[] = {"q_proj", "k_proj", "v_proj"};

// rest = "name.param": maps the leading child name through pairs (from first to second when forward).
std::string map_child(const std::string& rest, const NamePairs& pairs, bool forward) {
  for (const auto& [ldm, diffusers] : pairs) {
    const std::string& from = forward ? ldm : diffusers;
    const std::string& to = forward ? diffusers : ldm;
    if (rest.rfind(from + ".", 0) == 0) return to + rest.substr(from.size());
  }
  return rest;
}

int64_t reversed_block(const std::string& index, int64_t num_blocks, const std::string& name) {
  int64_t i = std::stoll(index);
  DL_CHECK(i < num_blocks, "VAE name '", name, "' does not fit a VAE with ", num_blocks, " blocks");
  return num_blocks - 1 - i;
}

}  // namespace

std::string vae_ldm_to_diffusers(const std::string& name, int64_t num_blocks) {
  static const std::regex down_re(R"(^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$)"),
      downsample_re(R"(^encoder\.down\.(\d+)\.downsample\.(.+)$)"),
      up_re(R"(^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$)"),
      upsample_re(R"(^decoder\.up\.(\d+)\.upsample\.(.+)$)"),
      mid_res_re(R"(^(encoder|decoder)\.mid\.block_([12])\.(.+)$)"),
      mid_attn_re(R"(^(encoder|decoder)\.mid\.attn_1\.(.+)$)"),
      norm_out_re(R"(^(encoder|decoder)\.norm_out\.(.+)$)");
  std::smatch m;
  if (std::regex_match(name, m, down_re))
    return str("encoder.down_blocks.", m[1], ".resnets.", m[2], ".",
               map_child(m[3], kVaeResnetChildren, true));
  if (std::regex_match(name, m, downsample_re))
    return str("encoder.down_blocks.", m[1], ".downsamplers.0.", m[2]);
  if (std::regex_match(name, m, up_re))
    return str("decoder.up_blocks.", reversed_block(m[1], num_blocks, name), ".resnets.", m[2], ".",
               map_child(m[3], kVaeResnetChildren, true));
  if (std::regex_match(name, m, upsample_re))
    return str("decoder.up_blocks.", reversed_block(m[1], num_blocks, name), ".upsamplers.0.", m[2]);
  if (std::regex_match(name, m, mid_res_re))
    return str(m[1], ".mid_block.resnets.", std::stoi(m[2]) - 1, ".",
               map_child(m[3], kVaeResnetChildren, true));
  if (std::regex_match(name, m, mid_attn_re))
    return str(m[1], ".mid_block.attentions.0.", map_child(m[2], kVaeAttentionChildren, true));
  if (std::regex_match(name, m, norm_out_re)) return str(m[1], ".conv_norm_out.", m[2]);
  return name;  // conv_in, conv_out, quant_conv, post_quant_conv
}

std::string vae_diffusers_to_ldm(const std::string& name, int64_t num_blocks) {
  static const std::regex down_re(R"(^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$)"),
      downsample_re(R"(^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)$)"),
      up_re(R"(^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$)"),
      upsample_re(R"(^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$)"),
      mid_res_re(R"(^(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$)"),
      mid_attn_re(R"(^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$)"),
      norm_out_re(R"(^(encoder|decoder)\.conv_norm_out\.(.+)$)");
  std::smatch m;
  if (std::regex_match(name, m, down_re))
    return str("encoder.down.", m[1], ".block.", m[2], ".", map_child(m[3], kVaeResnetChildren, false));
  if (std::regex_match(name, m, downsample_re)) return str("encoder.down.", m[1], ".downsample.", m[2]);
  if (std::regex_match(name, m, up_re))
    return str("decoder.up.", reversed_block(m[1], num_blocks, name), ".block.", m[2], ".",
               map_child(m[3], kVaeResnetChildren, false));
  if (std::regex_match(name, m, upsample_re))
    return str("decoder.up.", reversed_block(m[1], num_blocks, name), ".upsample.", m[2]);
  if (std::regex_match(name, m, mid_res_re))
    return str(m[1], ".mid.block_", std::stoi(m[2]) + 1, ".", map_child(m[3], kVaeResnetChildren, false));
  if (std::regex_match(name, m, mid_attn_re))
    return str(m[1], ".mid.attn_1.", map_child(m[2], kVaeAttentionChildren, false));
  if (std::regex_match(name, m, norm_out_re)) return str(m[1], ".norm_out.", m[2]);
  return name;
}

std::vector<OpenClipName> openclip_to_transformers(const std::string& name) {
  static const std::regex layer_re(R"(^transformer\.resblocks\.(\d+)\.(.+)$)");
  for (const auto& [openclip, transformers] : kOpenClipWholeNames)
    if (name == openclip) return {{transformers}};
  if (name == "text_projection") return {{"text_projection.weight", TensorChange::transpose}};
  std::smatch m;
  if (!std::regex_match(name, m, layer_re)) return {};
  const std::string layer = str("text_model.encoder.layers.", m[1], ".");
  const std::string rest = m[2];
  for (const char* param : {"weight", "bias"}) {
    if (rest != str("attn.in_proj_", param)) continue;
    std::vector<OpenClipName> parts;
    for (int part = 0; part < 3; ++part)
      parts.push_back({str(layer, "self_attn.", kQkv[part], ".", param), TensorChange::qkv_part, part});
    return parts;
  }
  const std::string mapped = map_child(rest, kOpenClipLayerChildren, true);
  if (mapped == rest) return {};
  return {{layer + mapped}};
}

OpenClipName transformers_to_openclip(const std::string& name) {
  static const std::regex layer_re(R"(^text_model\.encoder\.layers\.(\d+)\.(.+)$)"),
      qkv_re(R"(^self_attn\.([qkv])_proj\.(weight|bias)$)");
  for (const auto& [openclip, transformers] : kOpenClipWholeNames)
    if (name == transformers) return {openclip};
  if (name == "text_projection.weight") return {"text_projection", TensorChange::transpose};
  std::smatch m;
  if (!std::regex_match(name, m, layer_re)) return {};
  const std::string layer = str("transformer.resblocks.", m[1], ".");
  const std::string rest = m[2];
  std::smatch q;
  if (std::regex_match(rest, q, qkv_re)) {
    int part = q[1] == "q" ? 0 : q[1] == "k" ? 1 : 2;
    return {str(layer, "attn.in_proj_", q[2]), TensorChange::qkv_part, part};
  }
  const std::string mapped = map_child(rest, kOpenClipLayerChildren, false);
  if (mapped == rest) return {};
  return {layer + mapped};
}

}  // namespace dreamlora::convert
