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
  // Noise, timesteps, flips and crops come from per-sample generators derived from (seed, sample index),
  // so the data position above is their whole state; only libtorch's default generator (LoRA dropout)
  // carries state, saved here in base64.
  std::string default_rng_state;
  int64_t world_size = 1;         // workers that wrote the checkpoint (informational)
  Json fingerprint;               // result-changing settings + model and data identity
  double lr_multiplier = 1.0;     // LR schedule value at the next step (informational; recomputed)

  Json to_json() const;
  static TrainerState from_json(const Json& json, const std::string& what);
};

// The settings that decide the result, plus content hashes of the model configs and training data.
// The per-worker batch size is replaced by the global batch (batch x workers), so a run may resume on
// another number of workers with the same global batch.
Json make_fingerprint(const TrainConfig& config, const std::vector<std::filesystem::path>& data_files,
                      int world_size = 1);
// Human-readable differences ("lr: checkpoint 0.0001, now 0.0002"); empty when they match.
std::vector<std::string> fingerprint_differences(const Json& saved, const Json& current);

std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text, const std::string& what);

}  // namespace dreamlora
