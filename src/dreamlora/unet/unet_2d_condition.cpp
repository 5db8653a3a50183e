// UNet2DConditionModel: config, module tree, forward and loading (see unet_2d_condition.h).
#include "dreamlora/unet/unet_2d_condition.h"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/nn/frozen_conv.h"
#include "dreamlora/nn/norms.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::unet {

namespace {

const std::set<std::string> kDownTypes = {"CrossAttnDownBlock2D", "DownBlock2D"};
const std::set<std::string> kUpTypes = {"CrossAttnUpBlock2D", "UpBlock2D"};

// diffusers strips a "UNetRes" prefix from block type names before dispatching.
std::string strip_unetres(const std::string& type) {
  return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type;
}

std::vector<std::string> read_types(const io::ConfigReader& r, const std::string& key,
                                    std::vector<std::string> fallback,
                                    const std::set<std::string>& supported) {
  auto types = r.get<std::vector<std::string>>(key, fallback);
  for (size_t i = 0; i < types.size(); ++i) {
    types[i] = strip_unetres(types[i]);
    if (supported.count(types[i])) continue;
    std::string list;
    for (const auto& s : supported) list += (list.empty() ? "" : ", ") + s;
    fail(str(r.source(), ": unsupported block type '", types[i], "' at ", key, "[", i, "] (supported: ", list,
             ")"));
  }
  return types;
}

std::vector<bool> read_bool_per_block(const io::ConfigReader& r, const std::string& key, size_t n) {
  if (!r.has(key)) return std::vector<bool>(n, false);
  const io::Json& v = r.raw().at(key);
  if (v.is_boolean()) return std::vector<bool>(n, v.get<bool>());
  DL_CHECK(v.is_array() && v.size() == n, r.source(), ": key '", key, "' must be a bool or a list of ", n,
           " bools, got ", v.dump());
  std::vector<bool> out;
  for (const auto& e : v) {
    DL_CHECK(e.is_boolean(), r.source(), ": key '", key, "' must hold bools, got ", e.dump());
    out.push_back(e.get<bool>());
  }
  return out;
}

// Keys whose non-default values change the network in ways this port does not implement.
void reject_unsupported(const io::ConfigReader& r) {
  for (const char* key :
       {"class_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim",
        "encoder_hid_dim_type", "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act",
        "cross_attention_norm", "reverse_transformer_layers_per_block"}) {
    r.require_value(key, io::Json());
  }
  r.require_value("attention_type", "default");
  r.require_value("resnet_time_scale_shift", "default");
  r.require_value("dual_cross_attention", false);
  r.require_value("class_embeddings_concat", false);
  r.require_value("time_embedding_type", "positional");
  r.require_value("conv_in_kernel", 3);
  r.require_value("conv_out_kernel", 3);
  r.require_value("act_fn", "silu");
  r.require_value("mid_block_type", "UNetMidBlock2DCrossAttn");
  DL_CHECK(!(r.raw().contains("mid_block_type") && r.raw()["mid_block_type"].is_null()), r.source(),
           ": key 'mid_block_type' is null (a UNet without mid block is not supported)");
  DL_CHECK(!r.has("num_attention_heads"), r.source(),
           ": key 'num_attention_heads' must be null: diffusers 0.27 ",
           "refuses it too (in these configs `attention_head_dim` holds the number of heads)");
  if (r.has("addition_embed_type")) r.require_value("addition_embed_type", "text_time");
  if (r.has("_class_name")) r.require_value("_class_name", "UNet2DConditionModel");
}

// Writes an int when every entry is equal (the form diffusers' own configs use), else the list.
template <typename T>
io::Json compact(const std::vector<T>& values) {
  bool uniform = std::all_of(values.begin(), values.end(), [&](const T& v) { return v == values.front(); });
  if (uniform && !values.empty()) return io::Json(static_cast<T>(values.front()));
  io::Json list = io::Json::array();
  for (const auto& v : values) list.push_back(static_cast<T>(v));
  return list;
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const io::Json& json, const std::string& source) {
  DL_CHECK(json.is_object(), source, ": expected a JSON object");
  io::ConfigReader r(json, source);
  reject_unsupported(r);
  UNet2DConditionConfig c;
  c.sample_size = r.get_optional<int64_t>("sample_size");
  c.in_channels = r.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = r.get<int64_t>("out_channels", c.out_channels);
  c.center_input_sample = r.get<bool>("center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = r.get<bool>("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = r.get<int64_t>("freq_shift", c.freq_shift);
  c.down_block_types = read_types(r, "down_block_types", c.down_block_types, kDownTypes);
  c.up_block_types = read_types(r, "up_block_types", c.up_block_types, kUpTypes);
  c.block_out_channels = r.get<std::vector<int64_t>>("block_out_channels", c.block_out_channels);
  const size_t n = c.block_out_channels.size();
  DL_CHECK(c.down_block_types.size() == n, source, ": 'down_block_types' has ", c.down_block_types.size(),
           " entries but 'block_out_channels' has ", n);
  DL_CHECK(c.up_block_types.size() == n, source, ": 'up_block_types' has ", c.up_block_types.size(),
           " entries but 'block_out_channels' has ", n);
  c.only_cross_attention = read_bool_per_block(r, "only_cross_attention", n);
  c.layers_per_block = r.get_per_block("layers_per_block", 2, n);
  c.downsample_padding = r.get<int64_t>("downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = r.get<double>("mid_block_scale_factor", c.mid_block_scale_factor);
  c.dropout = r.get<double>("dropout", c.dropout);
  c.norm_num_groups = r.get<int64_t>("norm_num_groups", c.norm_num_groups);
  c.norm_eps = r.get<double>("norm_eps", c.norm_eps);
  c.cross_attention_dim = r.get_per_block("cross_attention_dim", 1280, n);
  c.transformer_layers_per_block = r.get_per_block("transformer_layers_per_block", 1, n);
  c.attention_head_dim = r.get_per_block("attention_head_dim", 8, n);
  c.use_linear_projection = r.get<bool>("use_linear_projection", c.use_linear_projection);
  c.upcast_attention = r.get<bool>("upcast_attention", c.upcast_attention);
  c.resnet_out_scale_factor = r.get<double>("resnet_out_scale_factor", c.resnet_out_scale_factor);
  c.resnet_skip_time_act = r.get<bool>("resnet_skip_time_act", c.resnet_skip_time_act);
  c.addition_embed_type = r.get_optional<std::string>("addition_embed_type");
  c.addition_time_embed_dim = r.get_optional<int64_t>("addition_time_embed_dim");
  c.projection_class_embeddings_input_dim = r.get_optional<int64_t>("projection_class_embeddings_input_dim");
  try {
    c.validate();
  } catch (const Error& e) {
    fail(str(source, ": ", e.what()));
  }
  return c;
}

UNet2DConditionConfig UNet2DConditionConfig::from_file(const std::filesystem::path& path) {
  return from_json(io::read_json(path), path.string());
}

void UNet2DConditionConfig::validate() const {
  const size_t n = block_out_channels.size();
  DL_CHECK(n > 0, "'block_out_channels' is empty");
  for (const auto* list :
       {&layers_per_block, &cross_attention_dim, &transformer_layers_per_block, &attention_head_dim}) {
    DL_CHECK(list->size() == n, "per-block list has ", list->size(), " entries, expected ", n);
  }
  DL_CHECK(down_block_types.size() == n && up_block_types.size() == n && only_cross_attention.size() == n,
           "'down_block_types'/'up_block_types'/'only_cross_attention' need ", n, " entries");
  for (size_t i = 0; i < n; ++i) {
    const int64_t c = block_out_channels[i];
    DL_CHECK(c > 0 && c % norm_num_groups == 0, "'block_out_channels'[", i, "] = ", c,
             " is not divisible by 'norm_num_groups' = ", norm_num_groups);
    DL_CHECK(attention_head_dim[i] > 0 && c % attention_head_dim[i] == 0, "'attention_head_dim'[", i,
             "] = ", attention_head_dim[i], " (the number of heads) does not divide block_out_channels[", i,
             "] = ", c);
    DL_CHECK(layers_per_block[i] > 0, "'layers_per_block'[", i, "] must be positive");
    DL_CHECK(transformer_layers_per_block[i] > 0, "'transformer_layers_per_block'[", i, "] must be positive");
  }
  if (has_text_time()) {
    DL_CHECK(addition_time_embed_dim.has_value() && *addition_time_embed_dim > 0,
             "'addition_embed_type' is \"text_time\" but 'addition_time_embed_dim' is missing");
    DL_CHECK(projection_class_embeddings_input_dim.has_value() && *projection_class_embeddings_input_dim > 0,
             "'addition_embed_type' is \"text_time\" but 'projection_class_embeddings_input_dim' is missing");
  }
}

io::Json UNet2DConditionConfig::to_json() const {
  io::Json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["_diffusers_version"] = "0.27.2";
  j["act_fn"] = "silu";
  j["addition_embed_type"] = addition_embed_type ? io::Json(*addition_embed_type) : io::Json();
  j["addition_embed_type_num_heads"] = 64;
  j["addition_time_embed_dim"] = addition_time_embed_dim ? io::Json(*addition_time_embed_dim) : io::Json();
  j["attention_head_dim"] = compact(attention_head_dim);
  j["attention_type"] = "default";
  j["block_out_channels"] = block_out_channels;
  j["center_input_sample"] = center_input_sample;
  j["class_embed_type"] = nullptr;
  j["class_embeddings_concat"] = false;
  j["conv_in_kernel"] = 3;
  j["conv_out_kernel"] = 3;
  j["cross_attention_dim"] = compact(cross_attention_dim);
  j["cross_attention_norm"] = nullptr;
  j["down_block_types"] = down_block_types;
  j["downsample_padding"] = downsample_padding;
  j["dropout"] = dropout;
  j["dual_cross_attention"] = false;
  j["encoder_hid_dim"] = nullptr;
  j["encoder_hid_dim_type"] = nullptr;
  j["flip_sin_to_cos"] = flip_sin_to_cos;
  j["freq_shift"] = freq_shift;
  j["in_channels"] = in_channels;
  j["layers_per_block"] = compact(layers_per_block);
  j["mid_block_only_cross_attention"] = nullptr;
  j["mid_block_scale_factor"] = mid_block_scale_factor;
  j["mid_block_type"] = mid_block_type;
  j["norm_eps"] = norm_eps;
  j["norm_num_groups"] = norm_num_groups;
  j["num_attention_heads"] = nullptr;
  j["num_class_embeds"] = nullptr;
  j["only_cross_attention"] = compact(only_cross_attention);
  j["out_channels"] = out_channels;
  j["projection_class_embeddings_input_dim"] =
      projection_class_embeddings_input_dim ? io::Json(*projection_class_embeddings_input_dim) : io::Json();
  j["resnet_out_scale_factor"] = resnet_out_scale_factor;
  j["resnet_skip_time_act"] = resnet_skip_time_act;
  j["resnet_time_scale_shift"] = "default";
  j["reverse_transformer_layers_per_block"] = nullptr;
  j["sample_size"] = sample_size ? io::Json(*sample_size) : io::Json();
  j["time_cond_proj_dim"] = nullptr;
  j["time_embedding_act_fn"] = nullptr;
  j["time_embedding_dim"] = nullptr;
  j["time_embedding_type"] = "positional";
  j["timestep_post_act"] = nullptr;
  j["transformer_layers_per_block"] = compact(transformer_layers_per_block);
  j["up_block_types"] = up_block_types;
  j["upcast_attention"] = upcast_attention;
  j["use_linear_projection"] = use_linear_projection;
  return j;
}

namespace {

// Arguments diffusers' get_down_block/get_up_block/get_mid_block pass for one block. As in diffusers,
// resnet_out_scale_factor and resnet_skip_time_act only reach block types not supported here.
UNetBlockOptions block_options(const UNet2DConditionConfig& c, size_t config_index) {
  UNetBlockOptions o;
  o.temb_channels = c.time_embed_dim();
  o.resnet_eps = c.norm_eps;
  o.resnet_groups = c.norm_num_groups;
  o.dropout = c.dropout;
  o.downsample_padding = c.downsample_padding;
  o.num_attention_heads = c.num_heads(config_index);
  o.cross_attention_dim = c.cross_attention_dim[config_index];
  o.use_linear_projection = c.use_linear_projection;
  o.only_cross_attention = c.only_cross_attention[config_index];
  o.upcast_attention = c.upcast_attention;
  return o;
}

std::shared_ptr<UNetDownBlock> make_down_block(const std::string& type, const UNetBlockOptions& o) {
  if (type == "CrossAttnDownBlock2D") return std::make_shared<CrossAttnDownBlock2DImpl>(o);
  return std::make_shared<DownBlock2DImpl>(o);
}

std::shared_ptr<UNetUpBlock> make_up_block(const std::string& type, const UNetBlockOptions& o) {
  if (type == "CrossAttnUpBlock2D") return std::make_shared<CrossAttnUpBlock2DImpl>(o);
  return std::make_shared<UpBlock2DImpl>(o);
}

}  // namespace

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& cfg) : config(cfg) {
  config.validate();
  const auto& c = config;
  const size_t n = c.num_blocks();
  const int64_t c0 = c.block_out_channels[0];
  conv_in = register_module("conv_in", nn::conv2d(torch::nn::Conv2dOptions(c.in_channels, c0, 3).padding(1)));
  time_proj =
      register_module("time_proj", Timesteps(c0, c.flip_sin_to_cos, static_cast<double>(c.freq_shift)));
  time_embedding = register_module("time_embedding", TimestepEmbedding(c0, c.time_embed_dim()));
  if (c.has_text_time()) {
    add_time_proj = register_module("add_time_proj", Timesteps(*c.addition_time_embed_dim, c.flip_sin_to_cos,
                                                               static_cast<double>(c.freq_shift)));
    add_embedding = register_module(
        "add_embedding", TimestepEmbedding(*c.projection_class_embeddings_input_dim, c.time_embed_dim()));
  }
  // diffusers registers up_blocks before mid_block: keep its named_parameters order.
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());

  int64_t output_channel = c0;
  for (size_t i = 0; i < n; ++i) {
    auto o = block_options(c, i);
    o.in_channels = output_channel;
    output_channel = c.block_out_channels[i];
    o.out_channels = output_channel;
    o.num_layers = c.layers_per_block[i];
    o.transformer_layers_per_block.assign(o.num_layers, c.transformer_layers_per_block[i]);
    o.add_downsample = i + 1 < n;
    down.push_back(make_down_block(c.down_block_types[i], o));
    down_blocks->push_back(down.back());
  }

  auto mid = block_options(c, n - 1);
  mid.in_channels = mid.out_channels = c.block_out_channels.back();
  mid.num_layers = 1;
  mid.transformer_layers_per_block = {c.transformer_layers_per_block.back()};
  mid.output_scale_factor = c.mid_block_scale_factor;
  mid.only_cross_attention = false;  // UNetMidBlock2DCrossAttn takes no only_cross_attention
  mid_block = register_module("mid_block", UNetMidBlock2DCrossAttn(mid));

  // Up blocks mirror the down path: block i of the up path uses config index n-1-i.
  output_channel = c.block_out_channels.back();
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;
    auto o = block_options(c, r);
    o.prev_output_channel = output_channel;
    output_channel = c.block_out_channels[r];
    o.out_channels = output_channel;
    o.in_channels = c.block_out_channels[r == 0 ? 0 : r - 1];
    o.num_layers = c.layers_per_block[r] + 1;
    o.transformer_layers_per_block.assign(o.num_layers, c.transformer_layers_per_block[r]);
    o.add_upsample = i + 1 < n;
    if (o.add_upsample) ++num_upsamplers_;
    up.push_back(make_up_block(c.up_block_types[i], o));
    up_blocks->push_back(up.back());
  }

  conv_norm_out = register_module(
      "conv_norm_out",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, c0).eps(c.norm_eps)));
  conv_out =
      register_module("conv_out", nn::conv2d(torch::nn::Conv2dOptions(c0, c.out_channels, 3).padding(1)));
}

torch::Tensor UNet2DConditionModelImpl::time_embedding_for(const torch::Tensor& timestep, int64_t batch,
                                                           const torch::Tensor& text_embeds,
                                                           const torch::Tensor& time_ids) {
  auto t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  DL_CHECK(t.dim() == 1 && (t.size(0) == batch || t.size(0) == 1), "UNet: timestep must be a scalar or [",
           batch, "], got shape ", t.sizes());
  t = t.to(conv_in->weight.device()).expand({batch});
  auto t_emb = time_proj(t).to(dtype());  // [B, block_out_channels[0]], computed in fp32
  auto emb = time_embedding(t_emb);       // [B, 4 * block_out_channels[0]]
  if (!config.has_text_time()) return emb;

  DL_CHECK(text_embeds.defined() && time_ids.defined(),
           "UNet: the config has addition_embed_type \"text_time\" ",
           "(SDXL), so text_embeds [B, P] and time_ids [B, 6] are required");
  DL_CHECK(text_embeds.dim() == 2 && text_embeds.size(0) == batch, "UNet: text_embeds must be [", batch,
           ", P], got ", text_embeds.sizes());
  DL_CHECK(time_ids.dim() == 2 && time_ids.size(0) == batch, "UNet: time_ids must be [", batch, ", 6], got ",
           time_ids.sizes());
  auto time_embeds = add_time_proj(time_ids.flatten());  // [B*6, addition_time_embed_dim], fp32
  time_embeds = time_embeds.reshape({batch, -1});        // [B, 6*addition_time_embed_dim]
  auto add_embeds = torch::cat({text_embeds.to(time_embeds.scalar_type()), time_embeds}, -1);  // [B, P + 6*a]
  DL_CHECK(add_embeds.size(1) == *config.projection_class_embeddings_input_dim, "UNet: text_embeds (",
           text_embeds.size(1), ") + time_ids embedding (", time_embeds.size(1),
           ") columns != projection_class_embeddings_input_dim ",
           *config.projection_class_embeddings_input_dim);
  return emb + add_embedding(add_embeds.to(emb.scalar_type()));
}

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                                                const torch::Tensor& encoder_hidden_states,
                                                const torch::Tensor& text_embeds,
                                                const torch::Tensor& time_ids) {
  // sample: [B, in, H, W], encoder_hidden_states: [B, L, D]
  DL_CHECK(sample.dim() == 4 && sample.size(1) == config.in_channels, "UNet: sample must be [B, ",
           config.in_channels, ", H, W], got ", sample.sizes());
  DL_CHECK(encoder_hidden_states.dim() == 3 && encoder_hidden_states.size(0) == sample.size(0),
           "UNet: encoder_hidden_states must be [", sample.size(0), ", L, D], got ",
           encoder_hidden_states.sizes());
  const auto type = dtype();
  const int64_t batch = sample.size(0);
  auto h = sample.to(type);
  const auto context = encoder_hidden_states.to(type);

  // Latents not divisible by 2^num_upsamplers need explicit upsample sizes (diffusers'
  // forward_upsample_size).
  const int64_t factor = int64_t{1} << num_upsamplers_;
  const bool forward_upsample_size = h.size(2) % factor != 0 || h.size(3) % factor != 0;

  if (config.center_input_sample) h = 2 * h - 1.0;
  const auto emb = time_embedding_for(timestep, batch, text_embeds, time_ids);  // [B, T]

  h = nn::conv2d_forward(conv_in, h);   // [B, c0, H, W]
  std::vector<torch::Tensor> skips{h};  // every down-path output, consumed from the back
  for (auto& block : down) {
    auto [out, res] = block->forward(h, emb, context);
    h = out;
    skips.insert(skips.end(), res.begin(), res.end());
  }
  h = mid_block(h, emb, context);  // [B, c_last, H/f, W/f]

  std::vector<int64_t> upsample_size;
  for (size_t i = 0; i < up.size(); ++i) {
    const auto n_res = static_cast<size_t>(up[i]->num_resnets());
    std::vector<torch::Tensor> res(skips.end() - n_res, skips.end());
    skips.resize(skips.size() - n_res);
    if (i + 1 < up.size() && forward_upsample_size) upsample_size = skips.back().sizes().slice(2).vec();
    h = up[i]->forward(h, res, emb, context, upsample_size);
  }
  h = torch::silu(nn::group_norm_fp32(conv_norm_out, h));
  return nn::conv2d_forward(conv_out, h);  // [B, out, H, W]
}

void UNet2DConditionModelImpl::set_gradient_checkpointing(bool enabled) {
  gradient_checkpointing_ = enabled;
  for (auto& b : down) b->set_gradient_checkpointing(enabled);
  mid_block->set_gradient_checkpointing(enabled);
  for (auto& b : up) b->set_gradient_checkpointing(enabled);
}

UNet2DConditionModel UNet2DConditionModelImpl::load(const std::filesystem::path& dir,
                                                    const std::string& variant, torch::ScalarType dtype) {
  auto config = UNet2DConditionConfig::from_file(dir / "config.json");
  UNet2DConditionModel model = [&] {
    nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
    return UNet2DConditionModel(config);
  }();
  model->to(dtype);
  const auto weights = io::load_component_weights(dir, variant);
  nn::load_state_dict_strict(
      *model, weights,
      dir.string() + " (UNet weights" + (variant.empty() ? std::string() : ", variant " + variant) + ")");
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->eval();
  return model;
}

}  // namespace dreamlora::unet
