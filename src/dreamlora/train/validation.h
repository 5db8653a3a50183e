// Validation images during and after training: --validation-prompt sampled with the LoRA being trained.
#pragma once

#include <cstdint>
#include <filesystem>

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/distributed.h"
#include "dreamlora/train/metrics.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

// The main worker writes --num-validation-images images to out/validation/step-<step>-<i>.png from a
// generator of their own (the training stream is not disturbed); the other workers wait without a time
// limit. The images also go to `metrics` (TensorBoard) when given. The UNet is back in training mode however
// this ends. A no-op without --validation-prompt.
void write_validation_images(pipeline::ModelBundle& model, const TrainConfig& config, int64_t step,
                             const std::filesystem::path& out, Distributed& dist,
                             MetricsLog* metrics = nullptr);

}  // namespace dreamlora::train
