// Text-to-image sampling as diffusers' StableDiffusion(XL)Pipeline: prompt -> embeddings -> classifier-free
// guidance -> sampler loop -> VAE decode -> RGB images. One library call used by `dreamlora sample`,
// validation during training and class-image generation for prior preservation.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/model_bundle.h"

namespace dreamlora::pipeline {

struct SampleOptions {
  std::string prompt;
  std::string negative_prompt;
  int64_t steps = 30;
  double guidance = 7.5;          // <= 1 disables classifier-free guidance
  std::string sampler = "euler";  // schedulers::sampler_names()
  uint64_t seed = 0;
  int64_t width = 0,
          height =
              0;  // 0: the UNet's sample_size * vae scale factor; multiples of 8 (of the VAE scale factor)
  int64_t num_images = 1;  // images per call, drawn with one generator seeded by seed
  // When set: one image per seed in one batch, each image's initial noise from a generator of its own,
  // so a batch gives the images that one call per seed gives (up to batched-kernel rounding) for the
  // deterministic samplers; num_images and seed are then ignored.
  std::vector<uint64_t> seeds;
  // SDXL micro-conditioning; 0 = (height, width)
  int64_t original_width = 0, original_height = 0, crop_top = 0, crop_left = 0;
};

// Validates options against the model (sizes, sampler name, steps); the message names the flag.
void check_sample_options(const ModelBundle& model, const SampleOptions& options);

// Generates options.num_images images. progress(step, total) is called after each denoising step.
std::vector<io::Image> text_to_image(ModelBundle& model, const SampleOptions& options,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

// PNG text chunks describing how an image was made ("parameters" in A1111's format, plus prompt, seed...).
io::TextChunks sample_metadata(const SampleOptions& options, int64_t image_index,
                               const std::string& lora_description);

}  // namespace dreamlora::pipeline
