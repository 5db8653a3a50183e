// The randomness of training samples. Sample n of a stream draws all of it (flip, crop, posterior sample,
// noise, timestep) from a CPU generator of its own, seeded from (seed, stream, n): the draws of a sample do
// not depend on the batch size, the number of workers or on anything drawn before, so resume and data
// parallelism stay exact, and a GPU run draws the same numbers as a CPU run.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/data_order.h"
#include "dreamlora/train/dataset.h"

namespace dreamlora::train {

constexpr uint64_t kInstanceStream = 1, kClassStream = 2;

// The generator of sample n of a stream (a splitmix64 mix of seed, stream and n).
at::Generator sample_generator(uint64_t seed, uint64_t stream, int64_t n);

struct NoiseOptions {
  double noise_offset = 0;  // --noise-offset: std of a per-channel constant added to the noise
  int64_t num_train_timesteps = 1000;
  double input_perturbation = 0;  // --input-perturbation: extra noise in the UNet's input only
};

struct NoiseDraws {
  torch::Tensor eps;          // posterior sample eps, latent_shape [C, h, w]
  torch::Tensor noise;        // diffusion noise (+ offset), latent_shape: the target
  torch::Tensor input_noise;  // the noise added to the input: noise, or noise + input perturbation
  int64_t timestep = 0;
};

// Draws from gen, on the CPU and in this order: eps, noise, the offset (when noise_offset > 0), the input
// perturbation (when input_perturbation > 0), timestep.
NoiseDraws draw_noise(at::Generator& gen, at::IntArrayRef latent_shape, const NoiseOptions& options);

struct TrainingSample {
  ExampleTensors example;
  torch::Tensor eps, noise, input_noise;  // as NoiseDraws, on the device
  int64_t timestep = 0;
};

struct SampleStream {
  ImageSet& set;
  DataOrder& order;
  uint64_t stream;  // kInstanceStream or kClassStream
};

// Samples first_n .. first_n + count - 1 of a stream: crops drawn and latents encoded as one batch, then
// each sample's noise draws from its own generator, moved to the device.
std::vector<TrainingSample> draw_samples(const SampleStream& source, int64_t first_n, int64_t count,
                                         uint64_t seed, pipeline::ModelBundle& model,
                                         const NoiseOptions& options, torch::Device device);

}  // namespace dreamlora::train
