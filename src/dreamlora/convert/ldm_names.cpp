// The UNet's diffusers block paths <-> the LDM numbering of original checkpoints and kohya's SDXL trainer
// (input_blocks / middle_block / output_blocks), after diffusers' convert_ldm_unet_checkpoint and kohya
// sd-scripts' library/sdxl_model_util.py. Shared by the kohya LoRA exporter and single-file loading.
#include "dreamlora/convert/ldm_names.h"

#include <regex>
#include <set>
#include <utility>

#include "dreamlora/common/error.h"

namespace dreamlora::convert {

namespace {

// diffusers resnet child <-> LDM ResBlock child.
const std::vector<std::pair<std::string, std::string>> kResnetNames = {
    {"norm1", "in_layers.0"},  {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"}, {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"}};

// UNet modules outside the down/mid/up blocks.
const std::vector<std::pair<std::string, std::string>> kTopLevelNames = {
    {"time_embedding.linear_1", "time_embed.0"},
    {"time_embedding.linear_2", "time_embed.2"},
    {"add_embedding.linear_1", "label_emb.0.0"},
    {"add_embedding.linear_2", "label_emb.0.2"},
    {"conv_in", "input_blocks.0.0"},
    {"conv_norm_out", "out.0"},
    {"conv_out", "out.2"}};

// rest = "" or ".child.path"; maps its first part(s) through the resnet table in the given direction.
std::string map_resnet_rest(const std::string& rest, bool to_ldm) {
  for (const auto& [diffusers, ldm] : kResnetNames) {
    const std::string& from = to_ldm ? diffusers : ldm;
    const std::string& to = to_ldm ? ldm : diffusers;
    const std::string head = "." + from;
    if (rest == head || rest.rfind(head + ".", 0) == 0) return "." + to + rest.substr(head.size());
  }
  return rest;
}

std::string map_top_level(const std::string& path, bool to_ldm) {
  for (const auto& [diffusers, ldm] : kTopLevelNames) {
    const std::string& from = to_ldm ? diffusers : ldm;
    const std::string& to = to_ldm ? ldm : diffusers;
    if (path == from || path.rfind(from + ".", 0) == 0) return to + path.substr(from.size());
  }
  return "";
}

int64_t to_int(const std::string& s) {
  return std::stoll(s);
}

void check_index(bool ok, const std::string& path, const UNetLayout& layout) {
  DL_CHECK(ok, "UNet module path '", path, "' does not fit a UNet with ", layout.num_blocks, " blocks of ",
           layout.layers_per_block, " layers");
}

}  // namespace

UNetLayout UNetLayout::from_config(int64_t num_blocks, int64_t layers_per_block,
                                   const std::vector<std::string>& up_block_types) {
  DL_CHECK(num_blocks > 0 && layers_per_block > 0,
           "UNet layout needs positive block count and layers_per_block, got ", num_blocks, " and ",
           layers_per_block);
  UNetLayout layout;
  layout.num_blocks = num_blocks;
  layout.layers_per_block = layers_per_block;
  for (const auto& type : up_block_types)
    layout.up_block_has_attention.push_back(type.find("CrossAttn") != std::string::npos);
  return layout;
}

UNetLayout UNetLayout::from_config(const std::vector<int64_t>& layers_per_block,
                                   const std::vector<std::string>& up_block_types) {
  DL_CHECK(!layers_per_block.empty(), "UNet layout: layers_per_block is empty");
  for (auto n : layers_per_block)
    DL_CHECK(n == layers_per_block.front(),
             "kohya LDM block names need the same layers_per_block in every block, got ", n, " and ",
             layers_per_block.front());
  return from_config(static_cast<int64_t>(layers_per_block.size()), layers_per_block.front(), up_block_types);
}

UNetLayout UNetLayout::sdxl_base() {
  return from_config(3, 2, {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"});
}

UNetLayout UNetLayout::from_unet(const torch::nn::Module& unet) {
  static const std::regex down_re(R"(^down_blocks\.(\d+)$)"), res_re(R"(^down_blocks\.0\.resnets\.(\d+)$)"),
      up_attn_re(R"(^up_blocks\.(\d+)\.attentions$)");
  int64_t blocks = 0, layers = 0;
  std::set<int64_t> attending;
  std::smatch m;
  for (const auto& item : unet.named_modules("", /*include_self=*/false)) {
    const std::string& key = item.key();
    if (std::regex_match(key, m, down_re)) blocks = std::max(blocks, to_int(m[1]) + 1);
    if (std::regex_match(key, m, res_re)) layers = std::max(layers, to_int(m[1]) + 1);
    if (std::regex_match(key, m, up_attn_re)) attending.insert(to_int(m[1]));
  }
  DL_CHECK(blocks > 0 && layers > 0,
           "UNetLayout::from_unet: the module has no down_blocks.N.resnets.M (not a UNet?)");
  UNetLayout layout = from_config(blocks, layers);
  for (int64_t i = 0; i < blocks; ++i) layout.up_block_has_attention.push_back(attending.count(i) > 0);
  return layout;
}

std::string diffusers_to_ldm(const std::string& path, const UNetLayout& layout) {
  static const std::regex down_re(R"(^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(\..+)?$)"),
      downsample_re(R"(^down_blocks\.(\d+)\.downsamplers\.0\.conv(\..+)?$)"),
      mid_re(R"(^mid_block\.(resnets|attentions)\.(\d+)(\..+)?$)"),
      up_re(R"(^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(\..+)?$)"),
      upsample_re(R"(^up_blocks\.(\d+)\.upsamplers\.0\.conv(\..+)?$)");
  const int64_t per = layout.layers_per_block + 1;
  std::smatch m;
  if (std::regex_match(path, m, down_re)) {
    int64_t i = to_int(m[1]), j = to_int(m[3]);
    check_index(i < layout.num_blocks && j < layout.layers_per_block, path, layout);
    bool resnet = m[2] == "resnets";
    return str("input_blocks.", 1 + i * per + j, resnet ? ".0" : ".1",
               resnet ? map_resnet_rest(m[4], true) : std::string(m[4]));
  }
  if (std::regex_match(path, m, downsample_re)) {
    int64_t i = to_int(m[1]);
    check_index(i < layout.num_blocks, path, layout);
    return str("input_blocks.", (i + 1) * per, ".0.op", std::string(m[2]));
  }
  if (std::regex_match(path, m, mid_re)) {
    int64_t j = to_int(m[2]);
    bool resnet = m[1] == "resnets";
    check_index(resnet ? j < 2 : j == 0, path, layout);
    return str("middle_block.", resnet ? 2 * j : 1, resnet ? map_resnet_rest(m[3], true) : std::string(m[3]));
  }
  if (std::regex_match(path, m, up_re)) {
    int64_t i = to_int(m[1]), j = to_int(m[3]);
    check_index(i < layout.num_blocks && j < per, path, layout);
    bool resnet = m[2] == "resnets";
    return str("output_blocks.", i * per + j, resnet ? ".0" : ".1",
               resnet ? map_resnet_rest(m[4], true) : std::string(m[4]));
  }
  if (std::regex_match(path, m, upsample_re)) {
    int64_t i = to_int(m[1]);
    check_index(i < layout.num_blocks, path, layout);
    DL_CHECK(static_cast<size_t>(i) < layout.up_block_has_attention.size(), "LDM name of '", path,
             "' needs to know whether up block ", i, " has attentions (UNetLayout::up_block_has_attention)");
    return str("output_blocks.", i * per + layout.layers_per_block,
               layout.up_block_has_attention[i] ? ".2" : ".1", ".conv", std::string(m[2]));
  }
  std::string top = map_top_level(path, true);
  DL_CHECK(!top.empty(), "UNet module path '", path, "' has no LDM (kohya SDXL) name");
  return top;
}

std::string ldm_to_diffusers(const std::string& path, const UNetLayout& layout) {
  static const std::regex input_re(R"(^input_blocks\.(\d+)\.(\d+)(\..+)?$)"),
      middle_re(R"(^middle_block\.(\d+)(\..+)?$)"), output_re(R"(^output_blocks\.(\d+)\.(\d+)(\..+)?$)");
  const int64_t per = layout.layers_per_block + 1;
  std::smatch m;
  std::string top = map_top_level(path, false);
  if (!top.empty()) return top;
  if (std::regex_match(path, m, input_re)) {
    int64_t n = to_int(m[1]), k = to_int(m[2]);
    std::string rest = m[3];
    check_index(n >= 1 && n < 1 + layout.num_blocks * per, path, layout);
    int64_t block = (n - 1) / per, layer = (n - 1) % per;
    if (layer == layout.layers_per_block) {
      DL_CHECK(k == 0 && rest.rfind(".op", 0) == 0, "LDM path '", path, "' is not a downsampler");
      return str("down_blocks.", block, ".downsamplers.0.conv", rest.substr(3));
    }
    DL_CHECK(k <= 1, "LDM path '", path, "': input block layer ", k, " does not exist");
    if (k == 0) return str("down_blocks.", block, ".resnets.", layer, map_resnet_rest(rest, false));
    return str("down_blocks.", block, ".attentions.", layer, rest);
  }
  if (std::regex_match(path, m, middle_re)) {
    int64_t n = to_int(m[1]);
    std::string rest = m[2];
    DL_CHECK(n <= 2, "LDM path '", path, "': middle_block has layers 0..2");
    if (n == 1) return "mid_block.attentions.0" + rest;
    return str("mid_block.resnets.", n / 2, map_resnet_rest(rest, false));
  }
  if (std::regex_match(path, m, output_re)) {
    int64_t n = to_int(m[1]), k = to_int(m[2]);
    std::string rest = m[3];
    check_index(n < layout.num_blocks * per, path, layout);
    int64_t block = n / per, layer = n % per;
    // The upsampler follows the attention when the block has one: its only child is "conv".
    bool upsampler = k == 2 || (k == 1 && (rest == ".conv" || rest.rfind(".conv.", 0) == 0));
    if (upsampler) return str("up_blocks.", block, ".upsamplers.0", rest);
    if (k == 0) return str("up_blocks.", block, ".resnets.", layer, map_resnet_rest(rest, false));
    return str("up_blocks.", block, ".attentions.", layer, rest);
  }
  fail(str("'", path, "' is not an LDM UNet module path (input_blocks / middle_block / output_blocks)"));
}

}  // namespace dreamlora::convert
