// AutoencoderKL: see autoencoder_kl.h.
#include "dreamlora/vae/autoencoder_kl.h"

#include <torch/torch.h>

#include <cmath>

#include "dreamlora/io/model_dir.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/nn/uninitialized.h"

namespace dreamlora::vae {

// ---------------------------------------------------------------------------------------------- config

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::Json& json, const std::string& source) {
  DL_CHECK(json.is_object(), source, ": expected a JSON object");
  io::ConfigReader r(json, source);
  AutoencoderKLConfig c;
  c.in_channels = r.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = r.get<int64_t>("out_channels", c.out_channels);
  c.down_block_types = r.get<std::vector<std::string>>("down_block_types", c.down_block_types);
  c.up_block_types = r.get<std::vector<std::string>>("up_block_types", c.up_block_types);
  c.block_out_channels = r.get<std::vector<int64_t>>("block_out_channels", c.block_out_channels);
  c.layers_per_block = r.get<int64_t>("layers_per_block", c.layers_per_block);
  c.act_fn = r.get<std::string>("act_fn", c.act_fn);
  c.latent_channels = r.get<int64_t>("latent_channels", c.latent_channels);
  c.norm_num_groups = r.get<int64_t>("norm_num_groups", c.norm_num_groups);
  if (r.has("sample_size")) {
    // diffusers accepts an int or a [h, w] list and tiles with its first entry.
    const io::Json& s = json.at("sample_size");
    c.sample_size = s.is_array() && !s.empty() ? s[0].get<int64_t>() : r.get<int64_t>("sample_size", 0);
  }
  c.scaling_factor = r.get<double>("scaling_factor", c.scaling_factor);
  c.shift_factor = r.get_optional<double>("shift_factor");
  c.latents_mean = r.get_optional<std::vector<double>>("latents_mean");
  c.latents_std = r.get_optional<std::vector<double>>("latents_std");
  c.force_upcast = r.get<bool>("force_upcast", c.force_upcast);
  c.use_quant_conv = r.get<bool>("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = r.get<bool>("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = r.get<bool>("mid_block_add_attention", c.mid_block_add_attention);

  // Everything that would build a different network than this implementation is an error.
  DL_CHECK(c.act_fn == "silu" || c.act_fn == "swish", source, ": unsupported value '", c.act_fn,
           "' for key 'act_fn' (dreamlora supports silu)");
  const auto n = c.block_out_channels.size();
  DL_CHECK(n >= 1, source, ": key 'block_out_channels' is empty");
  DL_CHECK(c.down_block_types.size() == n, source, ": key 'down_block_types' has ", c.down_block_types.size(),
           " entries but block_out_channels has ", n);
  DL_CHECK(c.up_block_types.size() == n, source, ": key 'up_block_types' has ", c.up_block_types.size(),
           " entries but block_out_channels has ", n);
  for (const auto& t : c.down_block_types) {
    DL_CHECK(t == "DownEncoderBlock2D", source, ": unsupported value '", t,
             "' in key 'down_block_types' (dreamlora supports DownEncoderBlock2D)");
  }
  for (const auto& t : c.up_block_types) {
    DL_CHECK(t == "UpDecoderBlock2D", source, ": unsupported value '", t,
             "' in key 'up_block_types' (dreamlora supports UpDecoderBlock2D)");
  }
  for (auto ch : c.block_out_channels) {
    DL_CHECK(ch > 0 && ch % c.norm_num_groups == 0, source, ": block_out_channels entry ", ch,
             " is not a positive multiple of norm_num_groups ", c.norm_num_groups);
  }
  DL_CHECK(c.layers_per_block >= 1, source, ": key 'layers_per_block' must be >= 1, got ",
           c.layers_per_block);
  DL_CHECK(c.scaling_factor > 0, source, ": key 'scaling_factor' must be > 0, got ", c.scaling_factor);
  return c;
}

AutoencoderKLConfig AutoencoderKLConfig::from_file(const std::filesystem::path& path) {
  return from_json(io::read_json(path), path.string());
}

io::Json AutoencoderKLConfig::to_json() const {
  auto opt = [](const auto& v) { return v ? io::Json(*v) : io::Json(nullptr); };
  return io::Json{{"_class_name", "AutoencoderKL"},
                  {"in_channels", in_channels},
                  {"out_channels", out_channels},
                  {"down_block_types", down_block_types},
                  {"up_block_types", up_block_types},
                  {"block_out_channels", block_out_channels},
                  {"layers_per_block", layers_per_block},
                  {"act_fn", act_fn},
                  {"latent_channels", latent_channels},
                  {"norm_num_groups", norm_num_groups},
                  {"sample_size", sample_size},
                  {"scaling_factor", scaling_factor},
                  {"shift_factor", opt(shift_factor)},
                  {"latents_mean", opt(latents_mean)},
                  {"latents_std", opt(latents_std)},
                  {"force_upcast", force_upcast},
                  {"use_quant_conv", use_quant_conv},
                  {"use_post_quant_conv", use_post_quant_conv},
                  {"mid_block_add_attention", mid_block_add_attention}};
}

int64_t AutoencoderKLConfig::scale_factor() const {
  return int64_t{1} << (static_cast<int64_t>(block_out_channels.size()) - 1);
}

// ---------------------------------------------------------------------------------------- distribution

DiagonalGaussianDistribution::DiagonalGaussianDistribution(const torch::Tensor& moments) {
  // moments: [B, 2L, h, w] -> mean, logvar: [B, L, h, w]
  auto parts = torch::chunk(moments, 2, 1);
  mean = parts[0];
  logvar = torch::clamp(parts[1], -30.0, 20.0);
  std = torch::exp(0.5 * logvar);
  var = torch::exp(logvar);
}

torch::Tensor DiagonalGaussianDistribution::sample(c10::optional<at::Generator> generator) const {
  // Drawn on the generator's device then moved, as diffusers' randn_tensor (same noise on CPU and GPU).
  const bool cpu_gen_for_gpu = generator.has_value() && generator->device().is_cpu() && !mean.is_cpu();
  auto eps = cpu_gen_for_gpu ? torch::randn(mean.sizes(), generator, mean.options().device(torch::kCPU))
                             : torch::randn(mean.sizes(), generator, mean.options());
  return sample_with(eps);
}

torch::Tensor DiagonalGaussianDistribution::sample_with(const torch::Tensor& eps) const {
  DL_CHECK(eps.sizes() == mean.sizes(), "DiagonalGaussianDistribution: eps has shape ", eps.sizes(),
           ", the latent has ", mean.sizes());
  return mean + std * eps.to(mean.options());
}

torch::Tensor DiagonalGaussianDistribution::kl() const {
  return 0.5 * torch::sum(torch::pow(mean, 2) + var - 1.0 - logvar, {1, 2, 3});
}

// ------------------------------------------------------------------------------------------------ model

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config) : config_(config) {
  EncoderDecoderOptions enc;
  enc.in_channels = config_.in_channels;
  enc.out_channels = config_.latent_channels;
  enc.block_out_channels = config_.block_out_channels;
  enc.layers_per_block = config_.layers_per_block;
  enc.norm_num_groups = config_.norm_num_groups;
  enc.double_z = true;
  enc.mid_block_add_attention = config_.mid_block_add_attention;
  EncoderDecoderOptions dec = enc;
  dec.in_channels = config_.latent_channels;
  dec.out_channels = config_.out_channels;
  dec.double_z = false;

  const int64_t L = config_.latent_channels;
  encoder = register_module("encoder", Encoder(enc));
  decoder = register_module("decoder", Decoder(dec));
  if (config_.use_quant_conv) {
    quant_conv = register_module("quant_conv", nn::conv2d(torch::nn::Conv2dOptions(2 * L, 2 * L, 1)));
  }
  if (config_.use_post_quant_conv) {
    post_quant_conv = register_module("post_quant_conv", nn::conv2d(torch::nn::Conv2dOptions(L, L, 1)));
  }
  set_tile_sample_min_size(config_.sample_size);
}

void AutoencoderKLImpl::set_tile_sample_min_size(int64_t pixels) {
  DL_CHECK(pixels >= config_.scale_factor(), "AutoencoderKL: tile size ", pixels,
           " is smaller than the scale factor ", config_.scale_factor());
  tile_sample_min_size_ = pixels;
  // int(sample_size / 2 ** (len(block_out_channels) - 1)) in diffusers
  tile_latent_min_size_ =
      static_cast<int64_t>(static_cast<double>(pixels) / static_cast<double>(config_.scale_factor()));
}

torch::ScalarType AutoencoderKLImpl::dtype() const {
  return encoder->conv_in->weight.scalar_type();
}

torch::Tensor AutoencoderKLImpl::encode_moments(const torch::Tensor& image) {
  // image: [B, C, H, W]
  if (use_tiling_ && (image.size(-1) > tile_sample_min_size_ || image.size(-2) > tile_sample_min_size_)) {
    return tiled_encode(image);
  }
  torch::Tensor h;
  if (use_slicing_ && image.size(0) > 1) {
    std::vector<torch::Tensor> parts;
    for (const auto& slice : image.split(1)) parts.push_back(encoder(slice));
    h = torch::cat(parts);
  } else {
    h = encoder(image);  // [B, 2L, h, w]
  }
  return quant_conv ? quant_conv(h) : h;
}

DiagonalGaussianDistribution AutoencoderKLImpl::encode(const torch::Tensor& image) {
  DL_CHECK(image.dim() == 4 && image.size(1) == config_.in_channels, "AutoencoderKL.encode: expected [B, ",
           config_.in_channels, ", H, W], got ", image.sizes());
  return DiagonalGaussianDistribution(encode_moments(image.to(dtype())));
}

torch::Tensor AutoencoderKLImpl::decode_untiled(const torch::Tensor& z) {
  // z: [B, L, h, w]
  if (use_tiling_ && (z.size(-1) > tile_latent_min_size_ || z.size(-2) > tile_latent_min_size_)) {
    return tiled_decode(z);
  }
  auto h = post_quant_conv ? post_quant_conv(z) : z;
  return decoder(h);  // [B, 3, h*f, w*f]
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& latents) {
  DL_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels,
           "AutoencoderKL.decode: expected [B, ", config_.latent_channels, ", h, w], got ", latents.sizes());
  auto z = latents.to(dtype());
  if (use_slicing_ && z.size(0) > 1) {
    std::vector<torch::Tensor> parts;
    for (const auto& slice : z.split(1)) parts.push_back(decode_untiled(slice));
    return torch::cat(parts);
  }
  return decode_untiled(z);
}

torch::Tensor AutoencoderKLImpl::forward(const torch::Tensor& image, bool sample_posterior,
                                         c10::optional<at::Generator> generator) {
  auto posterior = encode(image);
  return decode(sample_posterior ? posterior.sample(generator) : posterior.mode());
}

torch::Tensor AutoencoderKLImpl::scale_latents(const torch::Tensor& z) const {
  if (config_.shift_factor) return (z - *config_.shift_factor) * config_.scaling_factor;
  return z * config_.scaling_factor;
}

torch::Tensor AutoencoderKLImpl::unscale_latents(const torch::Tensor& latents) const {
  auto z = latents / config_.scaling_factor;
  if (config_.shift_factor) z = z + *config_.shift_factor;
  return z;
}

// ----------------------------------------------------------------------------------------------- tiling

namespace {

// Linear cross-fade of b's first rows (dim 2) / columns (dim 3) from a's last ones, in place on b
// (diffusers' blend_v / blend_h; the caller's tile grid sees the change).
void blend(const torch::Tensor& a, torch::Tensor& b, int64_t extent, int64_t dim) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double w = static_cast<double>(y) / static_cast<double>(extent);
    b.select(dim, y).copy_(a.select(dim, a.size(dim) - extent + y) * (1 - w) + b.select(dim, y) * w);
  }
}

// Blends a grid of overlapping tiles and crops each to row_limit before stitching (diffusers' loop).
torch::Tensor stitch(std::vector<std::vector<torch::Tensor>>& rows, int64_t blend_extent, int64_t row_limit) {
  std::vector<torch::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<torch::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      auto& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, blend_extent, 2);
      if (j > 0) blend(rows[i][j - 1], tile, blend_extent, 3);
      result_row.push_back(tile.slice(2, 0, row_limit).slice(3, 0, row_limit));
    }
    result_rows.push_back(torch::cat(result_row, 3));
  }
  return torch::cat(result_rows, 2);
}

}  // namespace

torch::Tensor AutoencoderKLImpl::tiled_encode(const torch::Tensor& image) {
  // image: [B, C, H, W] -> moments [B, 2L, H/f, W/f]
  const auto overlap =
      static_cast<int64_t>(static_cast<double>(tile_sample_min_size_) * (1 - tile_overlap_factor_));
  const auto blend_extent =
      static_cast<int64_t>(static_cast<double>(tile_latent_min_size_) * tile_overlap_factor_);
  const int64_t row_limit = tile_latent_min_size_ - blend_extent;
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < image.size(2); i += overlap) {
    std::vector<torch::Tensor> row;
    for (int64_t j = 0; j < image.size(3); j += overlap) {
      auto tile = image.slice(2, i, i + tile_sample_min_size_).slice(3, j, j + tile_sample_min_size_);
      tile = encoder(tile);
      row.push_back(quant_conv ? quant_conv(tile) : tile);
    }
    rows.push_back(std::move(row));
  }
  return stitch(rows, blend_extent, row_limit);
}

torch::Tensor AutoencoderKLImpl::tiled_decode(const torch::Tensor& z) {
  // z: [B, L, h, w] -> image [B, 3, h*f, w*f]
  const auto overlap =
      static_cast<int64_t>(static_cast<double>(tile_latent_min_size_) * (1 - tile_overlap_factor_));
  const auto blend_extent =
      static_cast<int64_t>(static_cast<double>(tile_sample_min_size_) * tile_overlap_factor_);
  const int64_t row_limit = tile_sample_min_size_ - blend_extent;
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < z.size(2); i += overlap) {
    std::vector<torch::Tensor> row;
    for (int64_t j = 0; j < z.size(3); j += overlap) {
      auto tile = z.slice(2, i, i + tile_latent_min_size_).slice(3, j, j + tile_latent_min_size_);
      if (post_quant_conv) tile = post_quant_conv(tile);
      row.push_back(decoder(tile));
    }
    rows.push_back(std::move(row));
  }
  return stitch(rows, blend_extent, row_limit);
}

// ------------------------------------------------------------------------------------------------ load

namespace {

// VAE files saved before diffusers 0.14 name the mid-block attention query/key/value/proj_attn;
// diffusers renames them on load (_convert_deprecated_attention_blocks), so do we.
void convert_deprecated_attention_keys(std::map<std::string, torch::Tensor>& weights) {
  static const std::vector<std::pair<std::string, std::string>> renames = {
      {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
  for (const char* part : {"encoder", "decoder"}) {
    const std::string path = std::string(part) + ".mid_block.attentions.0.";
    for (const auto& [old_name, new_name] : renames) {
      for (const char* suffix : {".weight", ".bias"}) {
        auto it = weights.find(path + old_name + suffix);
        if (it == weights.end()) continue;
        auto tensor = it->second;
        weights.erase(it);
        // LDM checkpoints stored these projections as 1x1 convs: [C, C, 1, 1] -> [C, C]
        if (tensor.dim() == 4) tensor = tensor.flatten(1);
        weights[path + new_name + suffix] = tensor;
      }
    }
  }
}

}  // namespace

AutoencoderKL AutoencoderKLImpl::load(const std::filesystem::path& vae_dir, const std::string& variant,
                                      torch::ScalarType dtype) {
  auto config = AutoencoderKLConfig::from_file(vae_dir / "config.json");
  if (dtype == torch::kFloat16 && config.force_upcast) dtype = torch::kFloat32;
  AutoencoderKL model = [&] {
    nn::SkipInitGuard uninitialized;  // every parameter is filled from the file below
    return AutoencoderKL(config);
  }();
  model->to(dtype);
  auto weights = io::load_component_weights(vae_dir, variant);
  convert_deprecated_attention_keys(weights);
  nn::load_state_dict_strict(
      *model, weights,
      vae_dir.string() + " (VAE weights" + (variant.empty() ? "" : ", variant " + variant) + ")");
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->eval();
  return model;
}

}  // namespace dreamlora::vae
