#include "dreamlora/train/sample_draws.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "dreamlora/train/host_copy.h"
#include "dreamlora/train/losses.h"

namespace dreamlora::train {

at::Generator sample_generator(uint64_t seed, uint64_t stream, int64_t n) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + stream * 0xBF58476D1CE4E5B9ull + static_cast<uint64_t>(n) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;  // splitmix64 finaliser
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return at::detail::createCPUGenerator(z ^ (z >> 31));
}

NoiseDraws draw_noise(at::Generator& gen, at::IntArrayRef latent_shape, const NoiseOptions& options) {
  NoiseDraws d;
  d.eps = torch::randn(latent_shape, gen);
  auto noise = draw_training_noise(latent_shape, options.noise_offset, options.input_perturbation, gen);
  d.noise = noise.target;
  d.input_noise = noise.input;
  d.timestep = torch::randint(0, options.num_train_timesteps, {1}, gen).item<int64_t>();
  return d;
}

std::vector<TrainingSample> draw_samples(const SampleStream& source, int64_t first_n, int64_t count,
                                         uint64_t seed, pipeline::ModelBundle& model,
                                         const NoiseOptions& options, torch::Device device) {
  std::vector<at::Generator> gens;
  std::vector<int64_t> indices;
  for (int64_t n = first_n; n < first_n + count; ++n) {
    gens.push_back(sample_generator(seed, source.stream, n));
    indices.push_back(source.order.item(n));
  }
  auto examples = source.set.examples(indices, model, gens);  // flip and crop come first from each generator
  std::vector<TrainingSample> out(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    auto& s = out[i];
    s.example = std::move(examples[i]);
    auto draws = draw_noise(gens[i], s.example.latent_mean.sizes(), options);
    s.eps = train::to_device_async(draws.eps, device);
    s.noise = train::to_device_async(draws.noise, device);
    s.input_noise =
        options.input_perturbation > 0 ? train::to_device_async(draws.input_noise, device) : s.noise;
    s.timestep = draws.timestep;
  }
  return out;
}

}  // namespace dreamlora::train
