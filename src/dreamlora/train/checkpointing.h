// Where checkpoints live, when and how they are written, and which one a run resumes from: the local store
// in --output-dir, the --checkpoint-mirror, the writer and schedule options, and --resume-from-checkpoint
// (none, latest, a folder, or s3://bucket/prefix/checkpoint-N).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "dreamlora/checkpoint/background_writer.h"
#include "dreamlora/checkpoint/checkpoint_schedule.h"
#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/io/json.h"
#include "dreamlora/train/distributed.h"
#include "dreamlora/train/metrics.h"
#include "dreamlora/train/train_config.h"
#include "dreamlora/train/trainer_state.h"

namespace dreamlora::train {

struct CheckpointPlaces {
  std::unique_ptr<checkpoint::CheckpointStore> store;
  std::shared_ptr<checkpoint::CheckpointSink> mirror;  // main worker with --checkpoint-mirror only
};

// The store of --output-dir (the main worker removes leftovers of interrupted writes) and, on the main
// worker, the mirror, whose access is checked now: bad credentials or a missing bucket stop the run before
// the first step, not at the first upload.
CheckpointPlaces open_checkpoint_places(const TrainConfig& config, const std::filesystem::path& out,
                                        const Distributed& dist);

// The verified checkpoint folder to resume from, downloaded into --output-dir first when it is remote;
// nullopt: start fresh. Every worker gets the same answer (the main worker downloads, the others wait).
std::optional<std::filesystem::path> find_resume_checkpoint(const TrainConfig& config,
                                                            CheckpointPlaces& places, Distributed& dist,
                                                            const std::filesystem::path& out);

// trainer_state.json of checkpoint dir, after its settings fingerprint matched `fingerprint` (an error
// lists the settings that differ).
TrainerState read_resumable_state(const std::filesystem::path& dir, const io::Json& fingerprint,
                                  bool allow_schedule_change);

// Makes `contents` also redraw the loss curve (svg) from points on the writer thread, after its own
// preparation; a failure there is a warning, not a failed checkpoint.
void redraw_loss_curve_with(checkpoint::CheckpointContents& contents, std::vector<MetricsLog::Point> points,
                            const std::filesystem::path& svg);

// --checkpoints-total-limit, --on-checkpoint-error, --sync-checkpoints.
checkpoint::WriterOptions checkpoint_writer_options(const TrainConfig& config);

// --checkpointing-steps, --checkpointing-minutes, --expected-uptime, --num-steps.
checkpoint::CheckpointScheduleOptions checkpoint_schedule_options(const TrainConfig& config);

}  // namespace dreamlora::train
