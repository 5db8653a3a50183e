#include "dreamlora/train/validation.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/text_to_image.h"
#include "dreamlora/train/progress.h"
#include "dreamlora/train/train_log.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

void write_validation_images(pipeline::ModelBundle& model, const TrainConfig& cfg, int64_t step,
                             const fs::path& out, Distributed& dist, MetricsLog* metrics) {
  if (cfg.validation_prompt.empty()) return;
  // The other workers wait without a time limit: sampling may outlast --dist-timeout.
  if (!dist.is_main()) return dist.wait_for_main("validation images");
  if (const char* delay = std::getenv("DREAMLORA_TEST_VALIDATION_DELAY_S"))  // test hook: a slow validation
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(delay)));
  torch::NoGradGuard no_grad;
  model.unet->eval();
  pipeline::SampleOptions o;
  o.prompt = cfg.validation_prompt;
  o.steps = cfg.validation_inference_steps;
  o.sampler = cfg.validation_sampler;
  o.seed = cfg.seed;
  o.num_images = cfg.num_validation_images;
  o.width = o.height = cfg.resolution;
  // Training mode comes back however validation ends: a failed validation is only a warning.
  struct TrainModeAgain {
    unet::UNet2DConditionModel unet;
    ~TrainModeAgain() { unet->train(); }
  } train_mode_again{model.unet};
  TaskProgress progress(str("validation images (step ", step, ")"), o.steps);
  auto images =
      pipeline::text_to_image(model, o, [&](int64_t done, int64_t total) { progress.update(done, total); });
  progress.finish();
  fs::create_directories(out / "validation");
  for (size_t i = 0; i < images.size(); ++i)
    io::save_png(out / "validation" / str("step-", step, "-", i, ".png"), images[i],
                 pipeline::sample_metadata(o, static_cast<int64_t>(i),
                                           "training LoRA at step " + std::to_string(step)));
  if (metrics) metrics->record_images(step, images);
  train_log(str("validation images for step ", step, " in ", (out / "validation").string()));
  dist.wait_for_main("validation images");
}

}  // namespace dreamlora::train
