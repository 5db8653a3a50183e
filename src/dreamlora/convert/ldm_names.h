// Name tables between diffusers/transformers layouts and the original ("LDM"/"SGM") layout of
// single-file Stable Diffusion checkpoints: UNet block numbering (also used by kohya's SDXL LoRA names),
// VAE block names and OpenCLIP text-encoder names. Module paths and parameter names both map: the rest of a
// path after the mapped part is carried over.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dreamlora::convert {

// What the UNet's LDM (original Stable Diffusion / kohya SDXL) block numbering depends on.
struct UNetLayout {
  int64_t num_blocks = 3;        // len(block_out_channels)
  int64_t layers_per_block = 2;  // resnets per down block (up blocks have one more)
  // Per up block: does it have attentions (then its upsampler is LDM layer 2, else 1). Needed only to
  // name upsamplers; empty: naming an upsampler is an error.
  std::vector<bool> up_block_has_attention;
  // From UNet2DConditionConfig values: len(block_out_channels), layers_per_block, up_block_types.
  static UNetLayout from_config(int64_t num_blocks, int64_t layers_per_block,
                                const std::vector<std::string>& up_block_types = {});
  // Same from the per-block layers_per_block list (LDM numbering needs one value for all blocks).
  static UNetLayout from_config(const std::vector<int64_t>& layers_per_block,
                                const std::vector<std::string>& up_block_types);
  static UNetLayout sdxl_base();                               // 3 blocks, 2 layers, up blocks 0 and 1 attend
  static UNetLayout from_unet(const torch::nn::Module& unet);  // counts down_blocks / resnets in the tree
};

// diffusers module path <-> LDM path of the same module ("down_blocks.1.attentions.0.proj_in" <->
// "input_blocks.4.1.proj_in"). Paths outside the block structure (time_embedding.linear_1, ...) map by table.
std::string diffusers_to_ldm(const std::string& path, const UNetLayout& layout);
std::string ldm_to_diffusers(const std::string& path, const UNetLayout& layout);

// VAE: "encoder.down.0.block.1.nin_shortcut.weight" <->
// "encoder.down_blocks.0.resnets.1.conv_shortcut.weight". num_blocks = len(block_out_channels) (decoder up
// blocks are numbered in reverse in the LDM layout).
std::string vae_ldm_to_diffusers(const std::string& name, int64_t num_blocks);
std::string vae_diffusers_to_ldm(const std::string& name, int64_t num_blocks);

// OpenCLIP text encoder (SD2 cond_stage_model.model., SDXL conditioner.embedders.1.model.) <-> transformers
// text::CLIPTextModel(WithProjection). The fused attention input projection and the transposed text
// projection are not renames: these say which name they correspond to and how the tensor changes.
enum class TensorChange {
  none,
  transpose,  // OpenCLIP text_projection [width, proj] <-> text_projection.weight [proj, width]
  qkv_part,   // in_proj_weight / in_proj_bias rows [part * n, (part + 1) * n) <-> q_proj / k_proj / v_proj
};
struct OpenClipName {
  std::string name;  // transformers name; "" when the OpenCLIP name has no counterpart
  TensorChange change = TensorChange::none;
  int part = 0;  // qkv_part: 0 q, 1 k, 2 v
};
// One OpenCLIP name -> the transformers name(s) it fills (three for a fused in_proj).
std::vector<OpenClipName> openclip_to_transformers(const std::string& name);
// One transformers name -> its OpenCLIP name (q/k/v projections all name the fused in_proj).
OpenClipName transformers_to_openclip(const std::string& name);

}  // namespace dreamlora::convert
