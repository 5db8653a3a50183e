#include "dreamlora/pipeline/text_to_image.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image_tensor.h"
#include "dreamlora/schedulers/sampler.h"

namespace dreamlora::pipeline {

namespace {

int64_t default_size(const ModelBundle& model) {
  return model.unet->config.sample_size.value_or(64) * model.vae_scale_factor();
}

}  // namespace

void check_sample_options(const ModelBundle& model, const SampleOptions& o) {
  const int64_t f = model.vae_scale_factor();
  const int64_t w = o.width > 0 ? o.width : default_size(model),
                h = o.height > 0 ? o.height : default_size(model);
  const int64_t multiple = std::max<int64_t>(8, f);
  DL_CHECK(w % multiple == 0 && h % multiple == 0 && w > 0 && h > 0,
           "--width/--height must be positive multiples of ", multiple, ", got ", w, "x", h);
  DL_CHECK(o.steps >= 1 && o.steps <= 1000, "--steps must be in 1..1000, got ", o.steps);
  DL_CHECK(o.num_images >= 1, "--num-images must be at least 1, got ", o.num_images);
  DL_CHECK(!o.prompt.empty(), "--prompt is required");
  bool known = false;
  for (const auto& n : schedulers::sampler_names()) known = known || n == o.sampler;
  if (!known) {
    std::string names;
    for (const auto& n : schedulers::sampler_names()) names += " " + n;
    fail(str("--sampler: unknown sampler '", o.sampler, "' (one of:", names, ")"));
  }
}

std::vector<io::Image> text_to_image(ModelBundle& model, const SampleOptions& o,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  check_sample_options(model, o);
  torch::NoGradGuard no_grad;
  const int64_t f = model.vae_scale_factor();
  const int64_t width = o.width > 0 ? o.width : default_size(model);
  const int64_t height = o.height > 0 ? o.height : default_size(model);
  const int64_t n = o.seeds.empty() ? o.num_images : static_cast<int64_t>(o.seeds.size());
  const bool cfg = o.guidance > 1.0;
  auto device = model.unet->parameters().front().device();
  auto dtype = model.unet->parameters().front().scalar_type();

  // prompt -> embeddings (negative first, as diffusers concatenates [uncond, cond])
  auto pos = text::encode_prompt(model.text, std::vector<std::string>(n, o.prompt));
  text::PromptEmbeddings neg;
  if (cfg) {
    if (model.sdxl && o.negative_prompt.empty()) {
      // force_zeros_for_empty_prompt: SDXL's unconditional embeddings are zeros
      neg.prompt_embeds = torch::zeros_like(pos.prompt_embeds);
      neg.pooled_prompt_embeds = torch::zeros_like(pos.pooled_prompt_embeds);
    } else {
      neg = text::encode_prompt(model.text, std::vector<std::string>(n, o.negative_prompt));
    }
  }
  auto embeds = cfg ? torch::cat({neg.prompt_embeds, pos.prompt_embeds}) : pos.prompt_embeds;
  torch::Tensor pooled, time_ids;
  if (model.sdxl) {
    pooled =
        cfg ? torch::cat({neg.pooled_prompt_embeds, pos.pooled_prompt_embeds}) : pos.pooled_prompt_embeds;
    const float oh = static_cast<float>(o.original_height > 0 ? o.original_height : height);
    const float ow = static_cast<float>(o.original_width > 0 ? o.original_width : width);
    auto ids = torch::tensor({oh, ow, static_cast<float>(o.crop_top), static_cast<float>(o.crop_left),
                              static_cast<float>(height), static_cast<float>(width)});
    time_ids = ids.unsqueeze(0).repeat({embeds.size(0), 1}).to(device, dtype);
    pooled = pooled.to(device, dtype);
  }
  embeds = embeds.to(device, dtype);

  // initial noise, scheduler loop with classifier-free guidance
  auto gen = at::detail::createCPUGenerator(o.seeds.empty() ? o.seed : o.seeds.front());
  auto sampler = schedulers::make_sampler(o.sampler, model.scheduler_config);
  sampler->set_timesteps(o.steps);
  const int64_t channels = model.unet->config.in_channels;
  torch::Tensor latents;
  if (o.seeds.empty()) {
    latents = torch::randn({n, channels, height / f, width / f}, gen);
  } else {
    std::vector<torch::Tensor> noise;
    for (uint64_t seed : o.seeds) {
      auto image_gen = at::detail::createCPUGenerator(seed);
      noise.push_back(torch::randn({1, channels, height / f, width / f}, image_gen));
    }
    latents = torch::cat(noise);
  }
  latents = latents * sampler->init_noise_sigma();
  const auto timesteps = sampler->timesteps().to(torch::kDouble);
  const int64_t total = timesteps.size(0);
  for (int64_t i = 0; i < total; ++i) {
    const double t = timesteps[i].item<double>();
    auto input = cfg ? torch::cat({latents, latents}) : latents;
    input = sampler->scale_model_input(input, t);
    auto t_batch = torch::full({input.size(0)}, t, torch::kFloat32).to(device);
    auto pred = model.unet->forward(input.to(device, dtype), t_batch, embeds, pooled, time_ids)
                    .to(torch::kCPU, torch::kFloat32);
    if (cfg) {
      auto parts = pred.chunk(2);
      pred = parts[0] + o.guidance * (parts[1] - parts[0]);
    }
    latents = sampler->step(pred, t, latents, gen).prev_sample;
    if (progress) progress(i + 1, total);
  }
  // VAE decode -> [0, 1]
  auto vae_dtype = model.vae->dtype();
  auto image = model.vae->decode(model.vae->unscale_latents(latents).to(device, vae_dtype));
  return io::tensor_to_images((image.to(torch::kFloat32) / 2 + 0.5).clamp(0, 1));
}

io::TextChunks sample_metadata(const SampleOptions& o, int64_t image_index,
                               const std::string& lora_description) {
  std::ostringstream params;
  params << o.prompt << "\n";
  if (!o.negative_prompt.empty()) params << "Negative prompt: " << o.negative_prompt << "\n";
  params << "Steps: " << o.steps << ", Sampler: " << o.sampler << ", CFG scale: " << o.guidance
         << ", Seed: " << o.seed << ", Size: " << o.width << "x" << o.height
         << ", Batch pos: " << image_index;
  if (!lora_description.empty()) params << ", LoRA: " << lora_description;
  params << ", Software: dreamlora";
  return {{"parameters", params.str()},
          {"prompt", o.prompt},
          {"negative_prompt", o.negative_prompt},
          {"seed", std::to_string(o.seed)},
          {"sampler", o.sampler},
          {"steps", std::to_string(o.steps)},
          {"guidance", std::to_string(o.guidance)},
          {"lora", lora_description}};
}

}  // namespace dreamlora::pipeline
