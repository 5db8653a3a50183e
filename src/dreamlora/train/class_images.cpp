#include "dreamlora/train/class_images.h"

#include <torch/torch.h>

#include <iostream>

#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/text_to_image.h"

namespace dreamlora {

namespace fs = std::filesystem;

int64_t ensure_class_images(ModelBundle& model, const TrainConfig& config, int rank, int world_size) {
  const fs::path dir = config.class_image_path;
  fs::create_directories(dir);
  int64_t generated = 0;
  int64_t existing = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_image_file(e.path())) ++existing;
  if (existing >= config.num_class_images) return 0;
  std::cerr << "dreamlora: generating " << config.num_class_images - existing << " class images for \""
            << config.class_prompt << "\" in " << dir.string() << std::endl;
  torch::NoGradGuard no_grad;
  const int64_t missing = config.num_class_images - existing;
  for (int64_t i = 0; i < config.num_class_images; ++i) {
    auto path = dir / ("class-" + std::to_string(i) + ".png");
    if (fs::exists(path)) continue;
    if (i % world_size != rank) {
      ++generated;  // another worker's share
      if (generated >= missing) break;
      continue;
    }
    SampleOptions o;
    o.prompt = config.class_prompt;
    o.seed = config.seed + static_cast<uint64_t>(i);
    o.steps = config.validation_inference_steps;
    o.sampler = config.validation_sampler;
    o.width = o.height = config.resolution;
    auto images = text_to_image(model, o);
    save_png(path, images.at(0), sample_metadata(o, 0, "none (class image)"));
    ++generated;
    if (generated >= missing) break;
  }
  return generated;
}

}  // namespace dreamlora
