// `dreamlora train`: DreamBooth LoRA training that checkpoints every N steps, resumes from the newest valid
// checkpoint, and stops cleanly (with a checkpoint) on SIGTERM/SIGINT or --max-runtime.
#pragma once

#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

// Runs (or resumes) training; returns the process exit status (stop/stop_request.h: 0 finished,
// 75 stopped early with a checkpoint, 1 error). Errors in the configuration or data throw before
// any training step.
int run_training(const TrainConfig& config);

}  // namespace dreamlora::train
