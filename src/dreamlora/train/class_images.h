// Prior preservation's class images: when --class-image-path holds fewer than --num-class-images, the
// missing ones are generated with the base model (no LoRA) and saved as PNGs. Image i always uses seed
// (seed + i), and each file appears atomically, so an interrupted generation continues where it stopped
// and ends with the same images.
#pragma once

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

// Returns how many images were generated. With several workers, worker `rank` makes the images whose
// index modulo world_size is its rank.
int64_t ensure_class_images(pipeline::ModelBundle& model, const TrainConfig& config, int rank = 0,
                            int world_size = 1);

}  // namespace dreamlora::train
