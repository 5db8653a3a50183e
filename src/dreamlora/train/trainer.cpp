#include "dreamlora/train/trainer.h"

#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <optional>

#include "dreamlora/checkpoint/output_lock.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/schedulers/ddpm.h"
#include "dreamlora/stop/stop_request.h"
#include "dreamlora/stop/stop_sources.h"
#include "dreamlora/train/checkpointing.h"
#include "dreamlora/train/loss_log.h"
#include "dreamlora/train/losses.h"
#include "dreamlora/train/metrics.h"
#include "dreamlora/train/optional_steps.h"
#include "dreamlora/train/outputs.h"
#include "dreamlora/train/sample_draws.h"
#include "dreamlora/train/snapshot.h"
#include "dreamlora/train/train_log.h"
#include "dreamlora/train/trainer_state.h"
#include "dreamlora/train/training_setup.h"
#include "dreamlora/train/training_step.h"
#include "dreamlora/train/validation.h"

namespace dreamlora::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double peak_rss_mib() {
  struct rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux
}

// Wires the pieces: setup (training_setup), resume and checkpoints (checkpointing, snapshot), the step
// loop (training_step, sample_draws, loss_log), validation and the final outputs (optional_steps).
class Trainer {
 public:
  explicit Trainer(TrainConfig config) : cfg_(std::move(config)) {}
  int run();

 private:
  void load_everything();
  bool resume();
  MicroBatch next_micro_batch();
  void train_step();
  void record_losses();
  void validate(const std::string& what);
  const LoRALayers& lora_layers();
  void save_checkpoint();
  int stopped_early();
  // A single worker may skip the rest of loading once stopped; workers of a group all load, then agree.
  bool stopping_alone() const { return !dist_->enabled() && stop::stop_requested(); }
  void finalize();
  void publish_outputs();

  TrainConfig cfg_;
  fs::path out_;
  torch::Device device_ = torch::kCPU;
  std::unique_ptr<Distributed> dist_;
  pipeline::ModelBundle model_;
  std::unique_ptr<schedulers::DDPMScheduler> ddpm_;
  TrainingData data_;
  std::unique_ptr<Optimizer> optimizer_;
  LossScaling scaling_;
  StepOptions step_options_;
  CheckpointPlaces checkpoints_;
  LoRALayers lora_layers_;                                 // found once: walking the module tree costs ~1 ms
  std::shared_ptr<const SnapshotLayout> snapshot_layout_;  // made at the first checkpoint
  std::unique_ptr<checkpoint::CheckpointWriter> writer_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<checkpoint::CheckpointSchedule> schedule_due_;
  TrainerState state_;
  io::Json fingerprint_;
  int64_t last_checkpoint_step_ = -1;
  float last_loss_ = 0;
  PendingLosses pending_losses_;
  std::optional<checkpoint::OutputLock> lock_;  // held by the main worker for the trainer's whole life
  OptionalSteps optional_;
};

void Trainer::load_everything() {
  device_ = training_device(cfg_);
  // The default generators (LoRA dropout) start from --seed, as accelerate's set_seed does, so two fresh
  // runs with the same seed agree; a resume restores their saved state instead.
  torch::manual_seed(cfg_.seed);
  out_ = cfg_.output_dir;
  fs::create_directories(out_);
  data_ = load_instance_data(cfg_, dist_->world_size());  // data errors come before the (slow) model load
  const auto load_start = Clock::now();
  model_ = load_base_model(cfg_, device_);
  train_log(str("model loaded from ", cfg_.model, " in ",
                std::chrono::duration<double>(Clock::now() - load_start).count(), " s (peak RSS so far ",
                peak_rss_mib(), " MiB)"));
  ddpm_ = std::make_unique<schedulers::DDPMScheduler>(training_noise_schedule(model_));
  ddpm_->keep_on(device_);
  if (cfg_.snr_gamma > 0) min_snr_weights(torch::ones({1}), cfg_.snr_gamma, ddpm_->prediction_type());
  // A stop while loading ends the run before its first step (run() checks, on every worker together).
  if (stopping_alone()) return;
  if (cfg_.prior_preservation) load_class_data(data_, model_, cfg_, *dist_);
  if (stopping_alone()) return;
  if (cfg_.cache_latents || cfg_.cache_latents_to_disk)
    cache_all_latents(data_, model_, cfg_, dist_->is_main());
  data_.embedder = std::make_unique<CaptionEmbedder>(!cfg_.train_text_encoder);
  const auto t0 = Clock::now();
  fingerprint_ = make_fingerprint(cfg_, data_.instance_images, data_.class_images, dist_->world_size());
  train_log(str("fingerprint (settings, sampled model weights, images, captions) in ",
                std::chrono::duration<double>(Clock::now() - t0).count(), " s"));
  if (!cfg_.train_text_encoder && cfg_.validation_prompt.empty()) release_text_encoders(model_, data_);
}

bool Trainer::resume() {
  checkpoints_ = open_checkpoint_places(cfg_, out_, *dist_);
  const auto dir = find_resume_checkpoint(cfg_, checkpoints_, *dist_, out_);
  if (!dir) return false;
  auto state = read_resumable_state(*dir, fingerprint_, cfg_.allow_schedule_change);
  restore_snapshot(*dir, state, model_, cfg_.train_text_encoder, *optimizer_, *scaling_.scaler, device_);
  state_ = state;
  state_.fingerprint = fingerprint_;
  last_checkpoint_step_ = state_.global_step;
  if (state.world_size != dist_->world_size())
    train_log(str("the checkpoint was written by ", state.world_size, " worker(s), this run has ",
                  dist_->world_size(), ": the global batch and the data order stay the same"));
  train_log(str("resumed from ", dir->string(), " at step ", state_.global_step, " of ", cfg_.num_steps));
  return true;
}

// This worker's share of the next global batch: its instance samples, then as many class samples.
MicroBatch Trainer::next_micro_batch() {
  const int64_t per_rank = cfg_.batch_size, global = per_rank * dist_->world_size();
  const NoiseOptions noise{cfg_.noise_offset, ddpm_->num_train_timesteps(), cfg_.input_perturbation};
  auto batch = draw_samples({*data_.instances, *data_.instance_order, kInstanceStream},
                            state_.instance_samples + dist_->rank() * per_rank, per_rank, cfg_.seed, model_,
                            noise, device_);
  state_.instance_samples += global;
  if (data_.classes) {
    auto prior = draw_samples({*data_.classes, *data_.class_order, kClassStream},
                              state_.class_samples + dist_->rank() * per_rank, per_rank, cfg_.seed, model_,
                              noise, device_);
    batch.insert(batch.end(), std::make_move_iterator(prior.begin()), std::make_move_iterator(prior.end()));
    state_.class_samples += global;
  }
  return stack_samples(batch);
}

void Trainer::train_step() {
  StepParts parts{model_,           *ddpm_, *data_.embedder, *optimizer_,
                  *scaling_.scaler, *dist_, device_,         weight_dtype(cfg_.mixed_precision)};
  StepOptions o = step_options_;
  o.poison_gradients = scaling_.poisoned_steps.count(state_.global_step + 1) > 0;
  const auto step = training_step(parts, o, [this] { return next_micro_batch(); });
  ++state_.global_step;
  state_.epoch = data_.instance_order->epoch_of(state_.instance_samples);
  state_.lr_multiplier = step.lr_multiplier;
  if (step.skipped && dist_->is_main())
    train_log(str("step ", state_.global_step,
                  ": inf/nan in the fp16 gradients; optimizer step skipped, loss scale now ",
                  scaling_.scaler->scale_value()));
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  pending_losses_.add(state_.global_step, step.loss, cfg_.lr * step.lr_multiplier, now,
                      scaling_.scaler->enabled() ? scaling_.scaler->scale_value() : -1.0);
  if (state_.global_step % std::max<int64_t>(1, cfg_.log_every) == 0 || state_.global_step == cfg_.num_steps)
    record_losses();
}

// Called at the same steps on every worker (a collective averages each loss over workers).
void Trainer::record_losses() {
  if (auto last = pending_losses_.flush(*dist_, dist_->is_main() ? metrics_.get() : nullptr))
    last_loss_ = *last;
}

// Validation images of the current step; a failure is only a warning.
void Trainer::validate(const std::string& what) {
  optional_.run(
      what, [&] { write_validation_images(model_, cfg_, state_.global_step, out_, *dist_, metrics_.get()); });
}

const LoRALayers& Trainer::lora_layers() {
  if (lora_layers_.empty()) lora_layers_ = find_lora_layers(model_, cfg_.train_text_encoder);
  return lora_layers_;
}

// Every worker holds the same LoRA weights; a cheap checksum compared across workers catches divergence
// before a checkpoint records it. Only the main worker writes.
void Trainer::save_checkpoint() {
  if (last_checkpoint_step_ == state_.global_step) return;
  record_losses();  // metrics.jsonl holds every step up to the checkpoint before it is written
  if (dist_->enabled()) {
    double checksum = 0;
    for (const auto& p : trainable_parameters(*optimizer_))
      checksum += p.detach().to(torch::kFloat64).sum().item<double>();
    dist_->check_equal(checksum, "the LoRA weight checksum at step " + std::to_string(state_.global_step));
  }
  if (!dist_->is_main()) {
    last_checkpoint_step_ = state_.global_step;
    return;
  }
  // Everything the step loop spends on a checkpoint counts as its stall.
  auto t0 = Clock::now();
  if (!snapshot_layout_) snapshot_layout_ = SnapshotLayout::make(lora_layers(), *optimizer_);
  SnapshotInputs in;
  in.state = state_;
  in.state.world_size = dist_->world_size();
  in.state.fingerprint = fingerprint_;
  in.optimizer_metadata = scaling_.scaler->to_metadata();
  in.lora_metadata = lora_metadata(cfg_, /*alpha_baked=*/false);
  in.device = device_;
  auto snap = capture_snapshot(snapshot_layout_, *optimizer_, std::move(in));
  redraw_loss_curve_with(snap, metrics_->points(), out_ / "loss.svg");  // beside each checkpoint
  const double waited = writer_->submit(state_.global_step, std::move(snap));
  if (waited > 0.01) train_log(str("waited ", waited, " s for the previous checkpoint write to finish"));
  last_checkpoint_step_ = state_.global_step;
  const double stall = std::chrono::duration<double>(Clock::now() - t0).count();
  auto previous = writer_->last();
  schedule_due_->on_checkpoint(state_.global_step, stall, previous ? previous->write_seconds : 0.0);
  metrics_->record_checkpoint(state_.global_step, stall);
}

void Trainer::publish_outputs() {
  const auto files = final_output_files(out_);
  auto& mirror = checkpoints_.mirror;
  try {
    mirror->publish_outputs(out_, files);
    train_log(str("copied the final outputs (", files.size(), " files) to ", mirror->describe()));
  } catch (const std::exception& e) {
    optional_.warn(str("the final outputs were not copied to ", mirror->describe(), ": ", e.what(),
                       " (they are complete in ", out_.string(), ")"));
  }
}

// The final LoRA files come first: everything after them (validation images, model card, loss curve,
// uploads) is optional and cannot cost the result.
void Trainer::finalize() {
  if (dist_->is_main()) write_final_lora(out_, cfg_, model_, copy_lora_weights(lora_layers()));
  if (cfg_.validation_steps == 0 || state_.global_step % cfg_.validation_steps != 0)
    validate("validation images");
  if (!dist_->is_main()) return;
  optional_.run("model card (README.md)", [&] { write_model_card(out_, cfg_, model_.sdxl); });
  optional_.run("loss curve (loss.svg)", [&] { metrics_->write_svg(out_ / "loss.svg"); });
}

int Trainer::run() {
  const auto env = DistributedEnv::from_environment();
  cfg_.device = worker_device(cfg_.device, env);  // "cuda" -> cuda:LOCAL_RANK
  dist_ =
      std::make_unique<Distributed>(env, torch::Device(cfg_.device), std::chrono::seconds(cfg_.dist_timeout));
  if (dist_->enabled()) train_log(str("worker ", dist_->rank(), " of ", dist_->world_size()));
  cfg_.validate();
  // The lock is the job's: the main worker takes it before anything is written to the output folder.
  if (dist_->is_main()) lock_.emplace(checkpoint::OutputLock::acquire(cfg_.output_dir));
  // Signals, a cloud's preemption notice (--watch-preemption) and --max-runtime, as one source, from the
  // start: a stop while the model loads or class images are made ends the run before its first step.
  const stop::StopSources stop_sources(cfg_.watch_preemption, cfg_.max_runtime);
  // Test hook: behave as if SIGTERM arrived during step N (0: while loading), for deterministic resume tests.
  const char* stop_at = std::getenv("DREAMLORA_TEST_STOP_AT_STEP");
  const int64_t test_stop_step = stop_at ? std::atoll(stop_at) : -1;
  if (test_stop_step == 0) stop::request_stop("DREAMLORA_TEST_STOP_AT_STEP");
  load_everything();
  if (dist_->any(stop_sources.requested())) return stopped_early();
  inject_training_lora(model_, cfg_, device_);
  optimizer_ = make_training_optimizer(model_, cfg_);
  step_options_ = step_options(cfg_, data_.classes != nullptr);
  scaling_ = make_loss_scaling(cfg_);
  const bool resumed = resume();
  dist_->check_equal(static_cast<double>(state_.global_step), "the step resumed from",
                     "every worker must read the same --output-dir (on several machines: shared storage)");
  if (dist_->is_main())
    metrics_ = std::make_unique<MetricsLog>(out_, resumed ? state_.global_step : 0, cfg_.report_to);
  writer_ =
      std::make_unique<checkpoint::CheckpointWriter>(*checkpoints_.store, checkpoint_writer_options(cfg_));
  if (dist_->is_main())
    io::write_file_durably(out_ / "training_config.json", config_to_json(cfg_).dump(2) + "\n");
  // The run that was killed may have died mid-upload: finish that upload (a no-op when it is complete).
  if (resumed && checkpoints_.mirror) writer_->republish(last_checkpoint_step_);

  const auto schedule_options = checkpoint_schedule_options(cfg_);
  schedule_due_ = std::make_unique<checkpoint::CheckpointSchedule>(schedule_options);

  ProgressBar progress(cfg_.num_steps, state_.global_step, cfg_.log_every);
  while (state_.global_step < cfg_.num_steps) {
    // All workers stop at the same step boundary when any of them is told to.
    if (dist_->any(stop_sources.requested())) break;
    const auto step_start = Clock::now();
    train_step();
    schedule_due_->on_step(state_.global_step,
                           std::chrono::duration<double>(Clock::now() - step_start).count());
    if (state_.global_step == test_stop_step) stop::request_stop("DREAMLORA_TEST_STOP_AT_STEP");
    if (dist_->is_main())
      progress.update(state_.global_step, last_loss_, cfg_.lr * state_.lr_multiplier, last_checkpoint_step_);
    // Every worker must agree (the time trigger could fire on one worker only).
    if (dist_->any(schedule_due_->due(state_.global_step))) save_checkpoint();
    if (cfg_.validation_steps > 0 && state_.global_step % cfg_.validation_steps == 0)
      validate(str("validation images at step ", state_.global_step));
  }
  progress.finish();
  if (state_.global_step < cfg_.num_steps) return stopped_early();
  if (schedule_options.any_trigger()) save_checkpoint();  // a re-run finds the run complete
  finalize();
  writer_->shutdown();
  dist_->wait_for_main("the final outputs");
  if (dist_->is_main()) metrics_->print_summary(writer_->history());
  if (checkpoints_.mirror) publish_outputs();
  if (auto* s3 = dynamic_cast<checkpoint::S3Sink*>(checkpoints_.mirror.get())) {
    s3->retry_failed_upload();
    train_log(s3->summary());
  }
  if (dist_->is_main()) optional_.print_summary(out_);
  return stop::kExitFinished;
}

// Stopped early: the step in flight is finished; checkpoint it and tell the restart loop to go on. Before
// the first step (a stop while loading) there is nothing to save: the same command starts or resumes.
int Trainer::stopped_early() {
  const std::string reason = stop::stop_requested() ? stop::stop_reason_text() : "by another worker";
  if (state_.global_step == 0) {
    train_log(str("stop requested (", reason,
                  ") before the first step: nothing to save; exiting with status ", stop::kExitStoppedEarly,
                  " (run the same command to start)"));
    return stop::kExitStoppedEarly;
  }
  train_log(str("stop requested (", reason, "): writing a checkpoint at step ", state_.global_step));
  save_checkpoint();
  writer_->shutdown();
  dist_->wait_for_main("the checkpoint write");
  train_log(str("checkpoint at step ", state_.global_step, " written; exiting with status ",
                stop::kExitStoppedEarly, " (run the same command to resume)"));
  return stop::kExitStoppedEarly;
}

}  // namespace

int run_training(const TrainConfig& config) {
  Trainer trainer(config);
  return trainer.run();
}

}  // namespace dreamlora::train
