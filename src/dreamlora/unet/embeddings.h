// diffusers' sinusoidal timestep embedding (get_timestep_embedding, Timesteps) and the MLP that follows
// it (TimestepEmbedding: linear_1, act, linear_2). Not implemented: cond_proj, post_act.
#pragma once

#include <torch/nn/module.h>

#include "dreamlora/nn/linear.h"

namespace dreamlora::unet {

// timesteps: [N] (int or float) -> [N, embedding_dim] float32, exactly diffusers' formula:
// freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift)); emb = [sin(s t f), cos(s t f)],
// halves swapped when flip_sin_to_cos; zero-padded by one column when embedding_dim is odd.
torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos = false, double downscale_freq_shift = 1.0,
                                     double scale = 1.0, int64_t max_period = 10000);

// Parameterless module (no keys) wrapping get_timestep_embedding.
class TimestepsImpl : public torch::nn::Module {
 public:
  TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift, double scale = 1.0);
  // [N] -> [N, num_channels] float32
  torch::Tensor forward(const torch::Tensor& timesteps);

  int64_t num_channels;
  bool flip_sin_to_cos;
  double downscale_freq_shift, scale;
};
TORCH_MODULE(Timesteps);

// linear_1 (in -> time_embed_dim), silu, linear_2 (time_embed_dim -> out_dim or time_embed_dim).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  // act_fn: "silu"/"swish" only (diffusers' default and every SD config).
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, const std::string& act_fn = "silu",
                        int64_t out_dim = 0);
  // [N, in] -> [N, out]
  torch::Tensor forward(const torch::Tensor& sample);

  nn::LinearWithLora linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace dreamlora::unet
