// What a checkpoint holds beyond the tensors: trainer_state.json (step, data position, RNG states,
// settings fingerprint, versions), and the fingerprint comparison that guards a resume.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

struct TrainerState {
  int64_t global_step = 0;
  int64_t instance_samples = 0;  // instance examples consumed (position in the instance data order)
  int64_t class_samples = 0;     // class examples consumed
  int64_t epoch = 0;
  // Noise, timesteps, flips and crops come from per-sample generators derived from (seed, sample index),
  // so the data position above is their whole state; only libtorch's default generator (LoRA dropout)
  // carries state, saved here in base64.
  std::string default_rng_state;
  // On CUDA, dropout draws from the device's default generator: its state too ("" on the CPU). A CUDA
  // checkpoint resumed on the CPU (or the reverse) ignores it: the dropout masks then differ.
  std::string cuda_rng_state;
  int64_t world_size = 1;      // workers that wrote the checkpoint (informational)
  io::Json fingerprint;        // result-changing settings + model and data identity
  double lr_multiplier = 1.0;  // LR schedule value at the next step (informational; recomputed)

  io::Json to_json() const;
  static TrainerState from_json(const io::Json& json, const std::string& what);
};

// The settings that decide the result, plus content hashes of the model configs, the model weights
// (sampled: weights_sample_hash), the instance and class images and their captions, and --num-steps when
// the LR schedule depends on it. The per-worker batch size is replaced by the global batch (batch x
// workers), so a run may resume on another number of workers with the same global batch.
io::Json make_fingerprint(const TrainConfig& config, const std::vector<TrainingImage>& instance_images,
                          const std::vector<TrainingImage>& class_images, int world_size = 1);

// Bytes of each tensor hashed from its start, middle and end (the whole tensor when it is smaller).
constexpr size_t kWeightSampleBytes = 4096;
// XXH3 over every tensor's name, dtype, shape and sampled bytes of a safetensors file (only the sampled
// bytes are read). Two fine-tunes of one architecture differ in every trained tensor's bytes.
std::string weights_sample_hash(const std::filesystem::path& safetensors_file);
// linear, cosine, cosine_with_restarts, polynomial: the LR at step s depends on --num-steps.
bool schedule_depends_on_total_steps(const std::string& scheduler);

struct FingerprintCheck {
  std::vector<std::string> differences;  // refuse the resume when not empty
  std::vector<std::string> notes;        // log lines: unrecorded fields, an accepted schedule change
};
// A checkpoint's fingerprint against this run's: fields the checkpoint lacks (older versions) are
// unknown, not different; an older checkpoint's merged "data" map is compared with this run's images;
// a changed --num-steps under a step-dependent schedule is refused unless allow_schedule_change.
FingerprintCheck compare_fingerprints(const io::Json& saved, const io::Json& current,
                                      bool allow_schedule_change);
// Human-readable differences ("lr: checkpoint 0.0001, now 0.0002"); empty when they match.
std::vector<std::string> fingerprint_differences(const io::Json& saved, const io::Json& current);

std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text, const std::string& what);

}  // namespace dreamlora::train
