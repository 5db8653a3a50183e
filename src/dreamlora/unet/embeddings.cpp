// Timestep embeddings: see embeddings.h.
#include "dreamlora/unet/embeddings.h"

#include <torch/torch.h>

#include <cmath>

#include "dreamlora/common/error.h"

namespace dreamlora::unet {

torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos, double downscale_freq_shift, double scale,
                                     int64_t max_period) {
  DL_CHECK(timesteps.dim() == 1, "get_timestep_embedding: timesteps must be 1-D, got shape ",
           timesteps.sizes());
  const int64_t half = embedding_dim / 2;
  // Same op order and float32 precision as diffusers so the sin/cos arguments round identically.
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  auto exponent =
      torch::arange(0, half, f32) * static_cast<float>(-std::log(static_cast<double>(max_period)));
  exponent = exponent / (static_cast<double>(half) - downscale_freq_shift);
  auto emb = timesteps.unsqueeze(1).to(torch::kFloat32) * torch::exp(exponent).unsqueeze(0);  // [N, half]
  if (scale != 1.0) emb = emb * scale;
  emb = flip_sin_to_cos ? torch::cat({torch::cos(emb), torch::sin(emb)}, -1)
                        : torch::cat({torch::sin(emb), torch::cos(emb)}, -1);  // [N, 2*half]
  if (embedding_dim % 2 == 1) emb = torch::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

TimestepsImpl::TimestepsImpl(int64_t channels, bool flip, double shift, double s)
    : num_channels(channels), flip_sin_to_cos(flip), downscale_freq_shift(shift), scale(s) {}

torch::Tensor TimestepsImpl::forward(const torch::Tensor& timesteps) {
  return get_timestep_embedding(timesteps, num_channels, flip_sin_to_cos, downscale_freq_shift, scale);
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             const std::string& act_fn, int64_t out_dim) {
  DL_CHECK(act_fn == "silu" || act_fn == "swish", "TimestepEmbedding: act_fn '", act_fn,
           "' is not supported (supported: silu)");
  linear_1 = register_module("linear_1", nn::LinearWithLora(in_channels, time_embed_dim));
  linear_2 =
      register_module("linear_2", nn::LinearWithLora(time_embed_dim, out_dim > 0 ? out_dim : time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
  // [N, in] -> [N, time_embed_dim] -> [N, out]
  return linear_2(torch::silu(linear_1(sample)));
}

}  // namespace dreamlora::unet
