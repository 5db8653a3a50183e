// CLIP text encoders (transformers modeling_clip.py, 4.38): config parsing, modules, strict loading.
#include "dreamlora/text/clip_text_model.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/nn/attention.h"
#include "dreamlora/nn/norms.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::text {

CLIPTextConfig CLIPTextConfig::from_json(const io::Json& json, const std::string& source) {
  io::ConfigReader r(json, source);
  CLIPTextConfig c;
  if (r.has("architectures")) {
    const io::Json& a = r.raw()["architectures"];
    DL_CHECK(a.is_array() && a.size() == 1 && a[0].is_string(), source,
             ": key 'architectures' must list one class, got ", a.dump());
    c.architecture = a[0].get<std::string>();
  }
  DL_CHECK(c.architecture == "CLIPTextModel" || c.architecture == "CLIPTextModelWithProjection", source,
           ": key 'architectures' names ", c.architecture,
           "; supported: CLIPTextModel, CLIPTextModelWithProjection");
  r.require_value("model_type", "clip_text_model");
  c.vocab_size = r.get<int64_t>("vocab_size", c.vocab_size);
  c.hidden_size = r.get<int64_t>("hidden_size", c.hidden_size);
  c.intermediate_size = r.get<int64_t>("intermediate_size", c.intermediate_size);
  c.projection_dim = r.get<int64_t>("projection_dim", c.projection_dim);
  c.num_hidden_layers = r.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = r.get<int64_t>("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = r.get<int64_t>("max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = r.get<std::string>("hidden_act", c.hidden_act);
  c.layer_norm_eps = r.get<double>("layer_norm_eps", c.layer_norm_eps);
  c.pad_token_id = r.get<int64_t>("pad_token_id", c.pad_token_id);
  c.bos_token_id = r.get<int64_t>("bos_token_id", c.bos_token_id);
  c.eos_token_id = r.get<int64_t>("eos_token_id", c.eos_token_id);
  DL_CHECK(c.hidden_act == "quick_gelu" || c.hidden_act == "gelu", source, ": key 'hidden_act' is '",
           c.hidden_act, "'; supported: quick_gelu, gelu");
  // Dropout would change the training forward pass; every SD text encoder has 0.
  r.require_value("attention_dropout", 0.0);
  r.require_value("dropout", 0.0);
  DL_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, source, ": hidden_size ",
           c.hidden_size, " is not divisible by num_attention_heads ", c.num_attention_heads);
  DL_CHECK(c.num_hidden_layers > 0 && c.vocab_size > 0 && c.max_position_embeddings > 0, source,
           ": num_hidden_layers, vocab_size and max_position_embeddings must be positive");
  return c;
}

CLIPTextConfig CLIPTextConfig::from_file(const std::filesystem::path& path) {
  return from_json(io::ConfigReader::from_file(path).raw(), path.string());
}

io::Json CLIPTextConfig::to_json() const {
  return io::Json{{"architectures", {architecture}},
                  {"attention_dropout", 0.0},
                  {"bos_token_id", bos_token_id},
                  {"eos_token_id", eos_token_id},
                  {"hidden_act", hidden_act},
                  {"hidden_size", hidden_size},
                  {"initializer_factor", 1.0},
                  {"initializer_range", 0.02},
                  {"intermediate_size", intermediate_size},
                  {"layer_norm_eps", layer_norm_eps},
                  {"max_position_embeddings", max_position_embeddings},
                  {"model_type", "clip_text_model"},
                  {"num_attention_heads", num_attention_heads},
                  {"num_hidden_layers", num_hidden_layers},
                  {"pad_token_id", pad_token_id},
                  {"projection_dim", projection_dim},
                  {"torch_dtype", "float32"},
                  {"transformers_version", "4.38.2"},
                  {"vocab_size", vocab_size}};
}

CLIPAttentionImpl::CLIPAttentionImpl(int64_t hidden_size, int64_t heads) : num_heads(heads) {
  k_proj = register_module("k_proj", nn::LinearWithLora(hidden_size, hidden_size));
  v_proj = register_module("v_proj", nn::LinearWithLora(hidden_size, hidden_size));
  q_proj = register_module("q_proj", nn::LinearWithLora(hidden_size, hidden_size));
  out_proj = register_module("out_proj", nn::LinearWithLora(hidden_size, hidden_size));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& x) {
  // x: [B, L, D] -> [B, L, D]; causal: position i attends to positions <= i.
  auto q = nn::split_heads(q_proj(x), num_heads);  // [B, heads, L, D/heads]
  auto k = nn::split_heads(k_proj(x), num_heads);
  auto v = nn::split_heads(v_proj(x), num_heads);
  auto out = nn::attention(q, k, v, /*causal=*/true);
  return out_proj(nn::merge_heads(out));  // [B, L, D]
}

CLIPMLPImpl::CLIPMLPImpl(int64_t hidden_size, int64_t intermediate_size, std::string act)
    : hidden_act(std::move(act)) {
  fc1 = register_module("fc1", nn::LinearWithLora(hidden_size, intermediate_size));
  fc2 = register_module("fc2", nn::LinearWithLora(intermediate_size, hidden_size));
}

torch::Tensor CLIPMLPImpl::forward(const torch::Tensor& x) {
  // [B, L, D] -> [B, L, intermediate] -> [B, L, D]
  auto h = fc1(x);
  h = hidden_act == "quick_gelu" ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);  // gelu: exact erf form
  return fc2(h);
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c) {
  auto ln = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
  };
  self_attn = register_module("self_attn", CLIPAttention(c.hidden_size, c.num_attention_heads));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act));
  layer_norm2 = register_module("layer_norm2", ln());
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& x) {
  // [B, L, D] -> [B, L, D], pre-LN residual blocks
  auto h = x + self_attn(nn::layer_norm_fp32(layer_norm1, x));
  return h + mlp(nn::layer_norm_fp32(layer_norm2, h));
}

CLIPTextEmbeddingsImpl::CLIPTextEmbeddingsImpl(const CLIPTextConfig& c) {
  token_embedding = register_module("token_embedding", nn::embedding(c.vocab_size, c.hidden_size));
  position_embedding =
      register_module("position_embedding", nn::embedding(c.max_position_embeddings, c.hidden_size));
}

torch::Tensor CLIPTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  // [B, L] -> [B, L, D]; positions are 0..L-1
  auto positions = position_embedding->weight.slice(0, 0, input_ids.size(1));  // [L, D]
  return token_embedding(input_ids) + positions.unsqueeze(0);
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPTextConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(CLIPEncoderLayer(c));
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& c) : config(c) {
  embeddings = register_module("embeddings", CLIPTextEmbeddings(c));
  encoder = register_module("encoder", CLIPEncoder(c));
  final_layer_norm = register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
}

CLIPTextOutput CLIPTextTransformerImpl::forward(const torch::Tensor& input_ids, bool output_hidden_states) {
  // input_ids: [B, L] -> last_hidden_state [B, L, D], pooler_output [B, D]
  DL_CHECK(input_ids.dim() == 2, "CLIP text encoder: input_ids must be [batch, length], got ",
           input_ids.sizes());
  DL_CHECK(input_ids.size(1) <= config.max_position_embeddings, "CLIP text encoder: ", input_ids.size(1),
           " tokens exceed max_position_embeddings ", config.max_position_embeddings);
  auto ids = input_ids.to(torch::kInt64);
  CLIPTextOutput out;
  auto h = embeddings(ids);
  if (output_hidden_states) out.hidden_states.push_back(h);
  for (const auto& layer : *encoder->layers) {
    h = layer->as<CLIPEncoderLayer>()->forward(h);
    if (output_hidden_states) out.hidden_states.push_back(h);
  }
  out.last_hidden_state = nn::layer_norm_fp32(final_layer_norm, h);
  // transformers 4.38: legacy configs (eos_token_id == 2) pool at the highest id, which is the
  // end-of-text token; otherwise at the first eos_token_id. argmax returns the first maximum.
  auto position =
      config.eos_token_id == 2 ? ids.argmax(-1) : ids.eq(config.eos_token_id).to(torch::kInt32).argmax(-1);
  auto index =
      position.view({-1, 1, 1}).expand({ids.size(0), 1, out.last_hidden_state.size(2)});  // [B, 1, D]
  out.pooler_output = out.last_hidden_state.gather(1, index).squeeze(1);                  // [B, D]
  return out;
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& c) : config(c) {
  text_model = register_module("text_model", CLIPTextTransformer(c));
}

CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids, bool output_hidden_states) {
  return text_model(input_ids, output_hidden_states);
}

CLIPTextModelWithProjectionImpl::CLIPTextModelWithProjectionImpl(const CLIPTextConfig& c)
    : CLIPTextModelImpl(c) {
  text_projection =
      register_module("text_projection", nn::LinearWithLora(c.hidden_size, c.projection_dim, /*bias=*/false));
}

CLIPTextOutput CLIPTextModelWithProjectionImpl::forward(const torch::Tensor& input_ids,
                                                        bool output_hidden_states) {
  CLIPTextOutput out = text_model(input_ids, output_hidden_states);
  out.text_embeds = text_projection(out.pooler_output);  // [B, projection_dim]
  return out;
}

CLIPTextModel load_clip_text_model(const std::filesystem::path& dir, const std::string& variant,
                                   torch::Dtype dtype) {
  auto config = CLIPTextConfig::from_file(dir / "config.json");
  std::shared_ptr<CLIPTextModelImpl> impl;
  nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
  if (config.with_projection()) {
    impl = std::make_shared<CLIPTextModelWithProjectionImpl>(config);
  } else {
    impl = std::make_shared<CLIPTextModelImpl>(config);
  }
  CLIPTextModel model(impl);
  auto weights = io::load_component_weights(dir, variant);
  weights.erase("text_model.embeddings.position_ids");
  nn::load_state_dict_strict(*model, weights, str(dir.string(), " (", config.architecture, ")"));
  model->to(dtype);
  return model;
}

}  // namespace dreamlora::text
