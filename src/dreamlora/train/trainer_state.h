// What a checkpoint holds beyond the tensors: trainer_state.json (step, data position, RNG states,
// settings fingerprint, versions), and the fingerprint comparison that guards a resume.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora {

struct TrainerState {
  int64_t global_step = 0;
  int64_t instance_samples = 0;  // instance examples consumed (position in the instance data order)
  int64_t class_samples = 0;     // class examples consumed
  int64_t epoch = 0;
  std::string rng_state;          // training generator (noise, timesteps, flips, crops), base64
  std::string default_rng_state;  // libtorch's default CPU generator (LoRA dropout), base64
  Json fingerprint;               // result-changing settings + model and data identity
  double lr_multiplier = 1.0;     // LR schedule value at the next step (informational; recomputed)

  Json to_json() const;
  static TrainerState from_json(const Json& json, const std::string& what);
};

// The settings that decide the result, plus content hashes of the model configs and training data.
Json make_fingerprint(const TrainConfig& config, const std::vector<std::filesystem::path>& data_files);
// Human-readable differences ("lr: checkpoint 0.0001, now 0.0002"); empty when they match.
std::vector<std::string> fingerprint_differences(const Json& saved, const Json& current);

std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text, const std::string& what);

}  // namespace dreamlora
