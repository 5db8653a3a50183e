// transformers' CLIPTextModel and CLIPTextModelWithProjection (4.38): pre-LN causal transformer over
// token + position embeddings. Parameter names equal transformers' state-dict keys
// (text_model.encoder.layers.0.self_attn.q_proj.weight, text_projection.weight). No attention_mask
// input: the SD pipelines never pass one (their configs lack use_attention_mask).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"
#include "dreamlora/nn/linear.h"

namespace dreamlora::text {

// config.json of a CLIP text encoder; fields spelled like its keys, defaults as transformers' CLIPTextConfig.
struct CLIPTextConfig {
  std::string architecture =
      "CLIPTextModel";  // architectures[0]: CLIPTextModel | CLIPTextModelWithProjection
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;  // 2 in SD's configs: pooling then takes argmax(input_ids)

  static CLIPTextConfig from_json(const io::Json& json, const std::string& source);
  static CLIPTextConfig from_file(const std::filesystem::path& path);
  io::Json to_json() const;  // a config.json transformers 4.38 loads
  bool with_projection() const { return architecture == "CLIPTextModelWithProjection"; }
};

struct CLIPTextOutput {
  torch::Tensor last_hidden_state;  // [B, L, D] after final_layer_norm
  torch::Tensor pooler_output;      // [B, D] last_hidden_state at the end-of-text position
  std::vector<torch::Tensor>
      hidden_states;          // when requested: [0] embeddings, [i] output of layer i (no final LN)
  torch::Tensor text_embeds;  // [B, projection_dim], CLIPTextModelWithProjection only
};

class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(int64_t hidden_size, int64_t num_heads);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t num_heads;
  nn::LinearWithLora q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(CLIPAttention);

class CLIPMLPImpl : public torch::nn::Module {
 public:
  CLIPMLPImpl(int64_t hidden_size, int64_t intermediate_size, std::string hidden_act);
  torch::Tensor forward(const torch::Tensor& x);

  std::string hidden_act;
  nn::LinearWithLora fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(CLIPMLP);

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

  CLIPAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  CLIPMLP mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

class CLIPTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config);
  torch::Tensor forward(const torch::Tensor& input_ids);

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(CLIPTextEmbeddings);

class CLIPEncoderImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderImpl(const CLIPTextConfig& config);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(CLIPEncoder);

class CLIPTextTransformerImpl : public torch::nn::Module {
 public:
  explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);

  CLIPTextConfig config;
  CLIPTextEmbeddings embeddings{nullptr};
  CLIPEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(CLIPTextTransformer);

// Also the base of CLIPTextModelWithProjection, so a pipeline holds either kind as a CLIPTextModel.
class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);
  // input_ids: int64 [B, L], L <= max_position_embeddings
  virtual CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false);

  CLIPTextConfig config;
  CLIPTextTransformer text_model{nullptr};
};
TORCH_MODULE(CLIPTextModel);

class CLIPTextModelWithProjectionImpl : public CLIPTextModelImpl {
 public:
  explicit CLIPTextModelWithProjectionImpl(const CLIPTextConfig& config);
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false) override;

  nn::LinearWithLora text_projection{nullptr};  // [projection_dim, hidden_size], no bias
};
TORCH_MODULE(CLIPTextModelWithProjection);

// Builds the class named by <dir>/config.json and loads its weights strictly (variant "" = plain
// model.safetensors, "fp16" = model.fp16.safetensors), then casts to dtype. The unused
// text_model.embeddings.position_ids buffer of older checkpoints is ignored, as transformers does.
CLIPTextModel load_clip_text_model(const std::filesystem::path& dir, const std::string& variant = "",
                                   torch::Dtype dtype = torch::kFloat32);

}  // namespace dreamlora::text
