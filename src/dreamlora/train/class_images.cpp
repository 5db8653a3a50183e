#include "dreamlora/train/class_images.h"

#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <vector>

#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/text_to_image.h"
#include "dreamlora/stop/stop_request.h"
#include "dreamlora/train/progress.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

namespace {
fs::path class_image_path(const fs::path& dir, int64_t i) {
  return dir / ("class-" + std::to_string(i) + ".png");
}
}  // namespace

int64_t ensure_class_images(pipeline::ModelBundle& model, const TrainConfig& config, int rank,
                            int world_size) {
  const fs::path dir = config.class_image_path;
  fs::create_directories(dir);
  int64_t generated = 0;
  int64_t existing = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && io::is_image_file(e.path())) ++existing;
  if (existing >= config.num_class_images) return 0;
  std::cerr << "dreamlora: generating " << config.num_class_images - existing << " class images for \""
            << config.class_prompt << "\" in " << dir.string() << std::endl;
  torch::NoGradGuard no_grad;
  // This worker's share of the missing images (image i belongs to worker i % world_size), generated in
  // --sample-batch-size batches; image i always has seed + i, whatever the batch or worker count.
  std::vector<int64_t> mine;
  for (int64_t i = 0, missing = config.num_class_images - existing;
       i < config.num_class_images && missing > 0; ++i) {
    if (fs::exists(class_image_path(dir, i))) continue;
    --missing;
    if (i % world_size == rank) mine.push_back(i);
  }
  const auto batch = static_cast<size_t>(std::max<int64_t>(1, config.sample_batch_size));
  TaskProgress progress("class images", static_cast<int64_t>(mine.size()));
  const bool log_batches = !stderr_is_terminal() && mine.size() > batch;
  for (size_t first = 0; first < mine.size(); first += batch) {
    if (stop::stop_requested()) break;  // the images made so far are on disk; a restart makes the rest
    const std::vector<int64_t> part(mine.begin() + first,
                                    mine.begin() + std::min(mine.size(), first + batch));
    pipeline::SampleOptions o;
    o.prompt = config.class_prompt;
    o.steps = config.validation_inference_steps;
    o.sampler = config.validation_sampler;
    o.width = o.height = config.resolution;
    for (int64_t i : part) o.seeds.push_back(config.seed + static_cast<uint64_t>(i));
    auto images = pipeline::text_to_image(model, o);
    for (size_t j = 0; j < part.size(); ++j) {
      o.seed = o.seeds[j];
      io::save_png(class_image_path(dir, part[j]), images.at(j),
                   pipeline::sample_metadata(o, 0, "none (class image)"));
    }
    generated += static_cast<int64_t>(part.size());
    progress.update(generated);
    if (log_batches) std::cerr << "dreamlora: class images " << generated << "/" << mine.size() << std::endl;
  }
  progress.finish();
  return generated;
}

}  // namespace dreamlora::train
