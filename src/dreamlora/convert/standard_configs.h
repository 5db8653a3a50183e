// The configs of the standard Stable Diffusion pipelines, in ONE place for loading single-file checkpoints
// without --model-config (pipeline/) and for the full-size presets of `make-model` (synth/). Each value is
// that of the published config.json files; standard_configs.cpp names the source that confirmed them.
#pragma once

#include <filesystem>
#include <string>

#include "dreamlora/convert/single_file.h"
#include "dreamlora/io/json.h"

namespace dreamlora::convert {

struct StandardConfigs {
  std::string repo;  // the Hugging Face repository the configs are those of
  CheckpointFamily family = CheckpointFamily::sd1;
  io::Json model_index, scheduler, unet, vae, text_encoder;
  io::Json text_encoder_2;                      // SDXL only (null otherwise)
  std::string tokenizer_pad = "<|endoftext|>";  // pad token of tokenizer/
  std::string tokenizer_2_pad = "!";            // of tokenizer_2/ (SDXL)
};

// SD1.x: runwayml/stable-diffusion-v1-5. SD2.x: stabilityai/stable-diffusion-2-1 when v_prediction, else
// stabilityai/stable-diffusion-2-1-base. SDXL: stabilityai/stable-diffusion-xl-base-1.0. v_prediction
// also sets the scheduler's prediction_type for SD1.x and SDXL (fine-tunes trained that way).
StandardConfigs standard_configs(CheckpointFamily family, bool v_prediction);

// Writes model_index.json, scheduler/, unet/, vae/ and text_encoder(_2)/ config.json under dir (no weights,
// no tokenizers).
void write_standard_configs(const StandardConfigs& configs, const std::filesystem::path& dir);

}  // namespace dreamlora::convert
