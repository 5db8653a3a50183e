// diffusers' UNet2DConditionModel as SD1.x / SD2.x / SDXL use it: config parsing with diffusers'
// defaults, the module tree with diffusers' keys, forward, strict loading, gradient checkpointing.
// Supported: positional timestep embedding, addition_embed_type null or "text_time" (SDXL), the
// CrossAttn/plain down and up blocks, UNetMidBlock2DCrossAttn. Anything else that would change the
// network (class embeddings, time_cond_proj, encoder_hid_proj, gated attention, scale_shift resnets,
// other block types...) is rejected by from_json with an error naming the key.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"
#include "dreamlora/unet/embeddings.h"
#include "dreamlora/unet/unet_2d_blocks.h"

namespace dreamlora::unet {

// Fields are spelled like config.json keys; defaults are diffusers' (0.27) __init__ defaults.
// Per-block keys accept an int (broadcast) or a list, as in diffusers, and are stored expanded.
//
// THE attention_head_dim TRAP: because of a historical naming bug in diffusers, the SD1/SD2/SDXL
// configs' `attention_head_dim` holds the NUMBER OF HEADS per block (SD1.5: 8 heads of 40/80/160
// channels; SDXL: [5, 10, 20] heads of 64 channels). diffusers sets num_attention_heads =
// num_attention_heads or attention_head_dim and uses head size = channels / heads. We do the same;
// a non-null `num_attention_heads` is refused exactly as diffusers 0.27 refuses it.
struct UNet2DConditionConfig {
  std::optional<int64_t> sample_size;  // informational (latent size the model was trained at)
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D"};
  std::vector<bool> only_cross_attention;  // per block (JSON: bool or list)
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  std::vector<int64_t> layers_per_block;  // per block (JSON default 2)
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  double dropout = 0.0;
  std::string act_fn = "silu";
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  std::vector<int64_t> cross_attention_dim;           // per block (JSON default 1280)
  std::vector<int64_t> transformer_layers_per_block;  // per block (JSON default 1)
  std::vector<int64_t> attention_head_dim;            // per block (JSON default 8) = number of heads!
  bool use_linear_projection = false;
  bool upcast_attention = false;
  double resnet_out_scale_factor = 1.0;
  bool resnet_skip_time_act = false;
  std::optional<std::string> addition_embed_type;  // null or "text_time"
  std::optional<int64_t> addition_time_embed_dim;
  std::optional<int64_t> projection_class_embeddings_input_dim;

  // Builds the config; defaults fill missing/null keys; unsupported values throw naming the key.
  static UNet2DConditionConfig from_json(const io::Json& json,
                                         const std::string& source = "unet/config.json");
  static UNet2DConditionConfig from_file(const std::filesystem::path& path);
  // A full diffusers-style config.json (all keys, _class_name, _diffusers_version) that from_json and
  // diffusers' UNet2DConditionModel.from_config both read back to the same network.
  io::Json to_json() const;
  void validate() const;  // cross-field checks (list lengths, divisibility, text_time dims)

  size_t num_blocks() const { return block_out_channels.size(); }
  int64_t num_heads(size_t block) const { return attention_head_dim.at(block); }
  int64_t time_embed_dim() const { return block_out_channels.at(0) * 4; }
  bool has_text_time() const { return addition_embed_type.has_value(); }
};

class UNet2DConditionModel;

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // Reads <dir>/config.json, builds the model in dtype and loads the weights strictly
  // (<dir>/diffusion_pytorch_model[.<variant>].safetensors, sharded or not); missing, unexpected or
  // mis-shaped keys throw one error listing them. Frozen weights may be fp16/bf16. Returned in eval
  // mode with requires_grad off for every parameter.
  static UNet2DConditionModel load(const std::filesystem::path& dir, const std::string& variant = "",
                                   torch::ScalarType dtype = torch::kFloat32);

  // sample: [B, in, H, W]; timestep: [B] or [] (int or float); encoder_hidden_states: [B, L, D];
  // SDXL (text_time): text_embeds [B, P], time_ids [B, 6]. -> [B, out, H, W] in the weights' dtype.
  // Inputs are cast to the weights' dtype.
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                        const torch::Tensor& encoder_hidden_states, const torch::Tensor& text_embeds = {},
                        const torch::Tensor& time_ids = {});

  // Recompute resnets and transformer blocks in backward instead of keeping their activations
  // (training mode only).
  void set_gradient_checkpointing(bool enabled);
  bool gradient_checkpointing() const { return gradient_checkpointing_; }
  torch::ScalarType dtype() const { return conv_in->weight.scalar_type(); }

  UNet2DConditionConfig config;
  torch::nn::Conv2d conv_in{nullptr};
  Timesteps time_proj{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  Timesteps add_time_proj{nullptr};          // text_time only
  TimestepEmbedding add_embedding{nullptr};  // text_time only
  torch::nn::ModuleList down_blocks{nullptr}, up_blocks{nullptr};
  UNetMidBlock2DCrossAttn mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
  std::vector<std::shared_ptr<UNetDownBlock>> down;  // typed views of down_blocks / up_blocks
  std::vector<std::shared_ptr<UNetUpBlock>> up;

 private:
  torch::Tensor time_embedding_for(const torch::Tensor& timestep, int64_t batch,
                                   const torch::Tensor& text_embeds, const torch::Tensor& time_ids);
  int64_t num_upsamplers_ = 0;
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace dreamlora::unet
