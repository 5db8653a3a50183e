#include "dreamlora/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <optional>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "dreamlora/checkpoint/background_writer.h"
#include "dreamlora/checkpoint/checkpoint_schedule.h"
#include "dreamlora/checkpoint/preemption_watcher.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/checkpoint/output_lock.h"
#include "dreamlora/checkpoint/signals.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/pipeline/text_to_image.h"
#include "dreamlora/schedulers/ddpm.h"
#include "dreamlora/train/class_images.h"
#include "dreamlora/train/compute_settings.h"
#include "dreamlora/train/data_order.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/distributed.h"
#include "dreamlora/train/host_copy.h"
#include "dreamlora/train/loss_scaler.h"
#include "dreamlora/train/losses.h"
#include "dreamlora/train/lr_schedule.h"
#include "dreamlora/train/metrics.h"
#include "dreamlora/train/optimizer.h"
#include "dreamlora/train/outputs.h"
#include "dreamlora/train/progress.h"
#include "dreamlora/train/trainer_state.h"

namespace dreamlora {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

void log(const std::string& line) { std::cerr << "dreamlora: " << line << std::endl; }

// Views of consecutive pieces of a flat tensor, one per shape.
std::vector<torch::Tensor> split_flat(const torch::Tensor& flat, const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (const auto& shape : shapes) {
    const int64_t n = c10::multiply_integers(shape);
    out.push_back(flat.narrow(0, offset, n).view(shape));
    offset += n;
  }
  return out;
}

std::string tensor_bytes(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

torch::Tensor bytes_tensor(const std::string& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

// Sample n of a stream draws all its randomness (flip, crop, posterior sample, noise, timestep) from a
// generator of its own, seeded from (seed, stream, n): the draws of a sample do not depend on the batch
// size, the number of workers or on anything drawn before, so resume and data parallelism stay exact.
at::Generator sample_generator(uint64_t seed, uint64_t stream, int64_t n) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + stream * 0xBF58476D1CE4E5B9ull + static_cast<uint64_t>(n) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;  // splitmix64 finaliser
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return at::detail::createCPUGenerator(z ^ (z >> 31));
}
constexpr uint64_t kInstanceStream = 1, kClassStream = 2;

torch::Dtype weight_dtype(const std::string& mixed_precision) {
  if (mixed_precision == "fp16") return torch::kFloat16;
  if (mixed_precision == "bf16") return torch::kBFloat16;
  return torch::kFloat32;
}

class Trainer {
 public:
  explicit Trainer(TrainConfig config) : cfg_(std::move(config)) {}
  int run();

 private:
  void load_everything();
  void inject_lora();
  void build_optimizer();
  bool resume();
  struct Sample {
    ExampleTensors example;
    torch::Tensor eps, noise;  // posterior sample eps, diffusion noise (the target): [C, h, w]
    torch::Tensor input_noise;  // the noise added to the input: noise, or noise + input perturbation
    int64_t timestep = 0;
  };
  std::vector<Sample> draw_samples(ImageSet& set, DataOrder& order, uint64_t stream, int64_t first_n, int64_t count);
  std::vector<torch::Tensor> trainable_parameters() const;
  void train_step();
  void record_losses();
  lora::LoRAWeights current_lora(bool copy);
  using LayerList = std::vector<std::pair<std::string, nn::Linear>>;
  const std::map<std::string, LayerList>& lora_layers();
  checkpoint::CheckpointContents snapshot();
  void save_checkpoint();
  void run_validation();
  void finalize();
  void release_text_encoders();
  void publish_outputs();
  // Runs a step the result does not depend on; its failure becomes a warning in the end summary.
  void optional_step(const std::string& what, const std::function<void()>& step);

  TrainConfig cfg_;
  fs::path out_;
  torch::Device device_ = torch::kCPU;
  ModelBundle model_;
  std::unique_ptr<schedulers::DDPMScheduler> ddpm_;
  std::unique_ptr<ImageSet> instances_, classes_;
  std::unique_ptr<DataOrder> instance_order_, class_order_;
  std::unique_ptr<CaptionEmbedder> embedder_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LossScaler> scaler_;
  std::set<int64_t> test_nan_steps_;  // DREAMLORA_TEST_LOSS_SCALER: steps whose gradients are poisoned
  LRScheduleOptions schedule_;
  std::unique_ptr<Distributed> dist_;
  std::unique_ptr<checkpoint::CheckpointStore> store_;
  std::shared_ptr<checkpoint::CheckpointSink> mirror_;
  std::map<std::string, LayerList> lora_layers_;  // by component
  // Views of the trainable tensors in checkpoint order, made once (see snapshot()).
  struct FlatLayout {
    struct Module {
      std::string component, path;
      double alpha;
    };
    std::vector<Module> lora_modules;
    std::vector<torch::Tensor> lora_views, moment_views;
    std::vector<std::vector<int64_t>> lora_shapes, moment_shapes;
    std::vector<std::string> moment_names;
  };
  std::shared_ptr<const FlatLayout> flat_;
  std::unique_ptr<checkpoint::CheckpointWriter> writer_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<checkpoint::CheckpointSchedule> schedule_due_;
  TrainerState state_;
  Json fingerprint_;
  int64_t last_checkpoint_step_ = -1;
  float last_loss_ = 0;
  // Losses of the steps since the last read, kept on the device: read (one host copy) every --log-every
  // steps, at checkpoints and at the end, then written to metrics.jsonl one line per step.
  struct PendingLoss {
    int64_t step;
    torch::Tensor loss;  // 0-dim fp32, on the device
    double lr, unix_time;
  };
  std::vector<PendingLoss> pending_losses_;
  std::optional<checkpoint::OutputLock> lock_;  // held by the main worker for the trainer's whole life
  std::vector<std::string> warnings_;           // optional steps that failed, repeated at the end
};

void Trainer::load_everything() {
  device_ = torch::Device(cfg_.device);
  DL_CHECK(device_.is_cpu() || torch::cuda::is_available(), "--device ", cfg_.device,
           ": CUDA is not available in this build of libtorch");
  const auto compute = apply_compute_settings({cfg_.deterministic, cfg_.allow_tf32});
  if (device_.is_cuda() || cfg_.deterministic) log(compute);
  out_ = cfg_.output_dir;
  fs::create_directories(out_);

  // Data errors come before the (slow) model load.
  auto instance_images = list_training_images(cfg_.image_path, cfg_.prompt, "--image-path",
                                              {cfg_.caption_extension, cfg_.caption_template});
  DL_CHECK(static_cast<int64_t>(instance_images.size()) * cfg_.repeats >= cfg_.batch_size, "--batch-size ",
           cfg_.batch_size, " is larger than the ", instance_images.size(), " instance images in ", cfg_.image_path,
           " (x", cfg_.repeats, " repeats)");
  std::vector<TrainingImage> repeated;
  for (int64_t r = 0; r < cfg_.repeats; ++r) repeated.insert(repeated.end(), instance_images.begin(), instance_images.end());
  if (cfg_.epochs > 0) {
    // --epochs instead of --num-steps: enough optimizer steps to visit every (repeated) image that often.
    const int64_t per_step = cfg_.batch_size * cfg_.gradient_accumulation * dist_->world_size();
    const int64_t images = static_cast<int64_t>(repeated.size());
    cfg_.num_steps = (cfg_.epochs * images + per_step - 1) / per_step;
    log(str("--epochs ", cfg_.epochs, " over ", images, " images: ", cfg_.num_steps, " optimizer steps"));
  }

  DatasetOptions dopt;
  dopt.resolution = cfg_.resolution;
  dopt.center_crop = cfg_.center_crop;
  dopt.random_flip = cfg_.random_flip;
  dopt.cache_text = !cfg_.train_text_encoder;
  dopt.buckets = {cfg_.enable_bucket, cfg_.resolution, cfg_.min_bucket_reso, cfg_.max_bucket_reso,
                  cfg_.bucket_reso_steps};
  instances_ = std::make_unique<ImageSet>(repeated, dopt);
  instance_order_ = cfg_.enable_bucket
                        ? std::make_unique<DataOrder>(cfg_.seed, instances_->bucket_ids(), cfg_.batch_size)
                        : std::make_unique<DataOrder>(cfg_.seed, instances_->size());
  if (cfg_.enable_bucket) log(bucket_summary(*instances_));

  LoadOptions load;
  load.variant = cfg_.variant;
  load.dtype = weight_dtype(cfg_.mixed_precision);
  load.device = device_;
  model_ = ModelBundle::load(cfg_.model, load);
  ddpm_ = std::make_unique<schedulers::DDPMScheduler>(schedulers::DDPMScheduler::from_file(model_.scheduler_config_path));
  ddpm_->keep_on(device_);
  if (cfg_.snr_gamma > 0) min_snr_weights(torch::ones({1}), cfg_.snr_gamma, ddpm_->prediction_type());
  std::vector<TrainingImage> class_images;
  if (cfg_.prior_preservation) {
    // Each worker generates its share of the missing class images, then all wait for the full set.
    ensure_class_images(model_, cfg_, dist_->rank(), dist_->world_size());
    dist_->barrier();
    class_images = list_training_images(cfg_.class_image_path, cfg_.class_prompt, "--class-image-path",
                                        {cfg_.caption_extension, ""});
    class_images.resize(std::min<size_t>(class_images.size(), static_cast<size_t>(cfg_.num_class_images)));
    dopt.buckets.enabled = false;
    classes_ = std::make_unique<ImageSet>(class_images, dopt);
    class_order_ = std::make_unique<DataOrder>(cfg_.seed + 1, classes_->size());
  }
  embedder_ = std::make_unique<CaptionEmbedder>(dopt.cache_text);
  const auto t0 = Clock::now();
  fingerprint_ = make_fingerprint(cfg_, instance_images, class_images, dist_->world_size());
  log(str("fingerprint (settings, sampled model weights, images, captions) in ",
          std::chrono::duration<double>(Clock::now() - t0).count(), " s"));
  if (dopt.cache_text && cfg_.validation_prompt.empty()) release_text_encoders();
}

// Frozen text encoders and no validation prompt: every caption the run will see is known now, so
// embed them all and free the tokenizers and encoders (as diffusers' scripts do): on SD 1.5 that is
// 470 MB of fp32 weights, on SDXL 2.8 GB, kept for nothing during the whole run.
void Trainer::release_text_encoders() {
  std::set<std::string> captions;
  for (const auto* set : {instances_.get(), classes_.get()})
    if (set)
      for (const auto& image : set->images()) captions.insert(image.caption);
  for (const auto& caption : captions) embedder_->embed(model_, {caption});
  model_.text = TextEncoders{};
  log(str("text encoders released after embedding ", captions.size(), " caption", captions.size() == 1 ? "" : "s"));
}

void Trainer::inject_lora() {
  // A generator of its own for the LoRA init, so the training generator's stream starts at the seed.
  auto init_gen = at::detail::createCPUGenerator(cfg_.seed);
  nn::LoRAOptions opts{cfg_.rank, cfg_.effective_lora_alpha(), cfg_.lora_dropout};
  auto report = lora::inject_lora(*model_.unet, cfg_.lora_target_list(), opts, init_gen);
  log("LoRA on the UNet: " + report.summary());
  lora::freeze_all_but_lora(*model_.unet);
  if (cfg_.train_text_encoder) {
    auto te = lora::inject_lora(*model_.text.text_encoder, cfg_.text_encoder_target_list(), opts, init_gen);
    log("LoRA on text_encoder: " + te.summary());
    lora::freeze_all_but_lora(*model_.text.text_encoder);
    if (model_.sdxl) {
      auto te2 = lora::inject_lora(*model_.text.text_encoder_2, cfg_.text_encoder_target_list(), opts, init_gen);
      log("LoRA on text_encoder_2: " + te2.summary());
      lora::freeze_all_but_lora(*model_.text.text_encoder_2);
    }
  }
  for (auto& [name, p] : lora::lora_parameters(*model_.unet)) p.set_requires_grad(true);
  model_.unet->to(device_);
  model_.unet->train();
  if (cfg_.gradient_checkpointing) model_.unet->set_gradient_checkpointing(true);
}

void Trainer::build_optimizer() {
  double lr = cfg_.lr, te_lr = cfg_.text_encoder_lr;
  if (cfg_.scale_lr) {
    lr *= static_cast<double>(cfg_.batch_size * cfg_.gradient_accumulation);
    te_lr *= static_cast<double>(cfg_.batch_size * cfg_.gradient_accumulation);
  }
  std::vector<ParamGroup> groups;
  ParamGroup unet_group;
  unet_group.lr = lr;
  for (auto& [name, p] : lora::lora_parameters(*model_.unet)) unet_group.params.emplace_back("unet." + name, p);
  groups.push_back(unet_group);
  if (cfg_.train_text_encoder) {
    ParamGroup te;
    te.lr = te_lr;
    for (auto& [name, p] : lora::lora_parameters(*model_.text.text_encoder)) te.params.emplace_back("text_encoder." + name, p);
    if (model_.sdxl)
      for (auto& [name, p] : lora::lora_parameters(*model_.text.text_encoder_2))
        te.params.emplace_back("text_encoder_2." + name, p);
    groups.push_back(te);
  }
  optimizer_ = make_optimizer(cfg_, std::move(groups));
  schedule_.name = cfg_.scheduler;
  schedule_.warmup_steps = cfg_.warmup_steps;
  schedule_.total_steps = cfg_.num_steps;
  schedule_.num_cycles = static_cast<int>(cfg_.num_cycles);
  schedule_.power = cfg_.lr_power;
  // fp16 gradients underflow without a loss scale; bf16 has fp32's exponent range and needs none.
  const char* test_scaler = std::getenv("DREAMLORA_TEST_LOSS_SCALER");
  scaler_ = std::make_unique<LossScaler>(cfg_.mixed_precision == "fp16" || test_scaler != nullptr);
  if (test_scaler) {
    // Test hook: the scaler in any precision, and NaN gradients at the listed (1-based) steps.
    std::stringstream list(test_scaler);
    std::string item;
    while (std::getline(list, item, ','))
      if (!item.empty()) test_nan_steps_.insert(std::stoll(item));
  }
}

bool Trainer::resume() {
  store_ = std::make_unique<checkpoint::CheckpointStore>(out_);
  if (dist_->is_main())
    for (const auto& p : store_->cleanup_temporaries()) log("removed the leftover of an interrupted write: " + p.string());
  const std::string& how = cfg_.resume_from_checkpoint;
  if (!cfg_.checkpoint_mirror.empty() && dist_->is_main()) {
    // Bad credentials or a missing bucket stop the run now, not at the first upload.
    mirror_ = checkpoint::make_mirror(cfg_.checkpoint_mirror, cfg_.s3_endpoint);
    checkpoint::check_mirror_access(*mirror_);
    store_->add_mirror(mirror_);
    log("mirroring checkpoints to " + mirror_->describe());
  }
  if (how == "none" || how.empty()) return false;
  fs::path dir;
  if (how.rfind("s3://", 0) == 0) {
    // One remote checkpoint: s3://bucket/prefix/checkpoint-N
    auto slash = how.find_last_of('/');
    auto step = checkpoint::parse_checkpoint_dir_name(how.substr(slash + 1));
    DL_CHECK(step.has_value(), "--resume-from-checkpoint ", how, ": expected s3://bucket/prefix/checkpoint-<step>");
    if (dist_->is_main()) {
      auto sink = checkpoint::make_mirror(how.substr(0, slash), cfg_.s3_endpoint);
      auto* s3 = dynamic_cast<checkpoint::S3Sink*>(sink.get());
      auto got = checkpoint::download_checkpoint(s3->client(), s3->location(), *step, out_);
      DL_CHECK(got.ok, "--resume-from-checkpoint ", how, ": ", got.reason);
    }
    dist_->wait_for_main("the checkpoint download");
    dir = store_->path_for(*step);
  } else if (how == "latest") {
    if (mirror_) {
      // A fresh machine: the mirror's newest checkpoint that verifies comes into the output dir.
      auto local = store_->latest_valid();
      const int64_t local_step = local.latest ? local.latest->step : -1;
      mirror_->restore_latest(*store_, local_step, [](const std::string& line) { log(line); });
    }
    dist_->wait_for_main("the checkpoint download");
    auto latest = store_->latest_valid();
    for (const auto& s : latest.skipped)
      log(str("skipping ", s.path.string(), ": ", s.reason));
    if (!latest.latest) {
      log("no valid checkpoint in " + out_.string() + ": starting fresh");
      return false;
    }
    dir = latest.latest->path;
  } else {
    dir = how;
    auto v = checkpoint::verify_checkpoint(dir);
    DL_CHECK(v.ok, "--resume-from-checkpoint ", dir.string(), ": does not verify: ", v.reason);
  }
  auto state = TrainerState::from_json(read_json(dir / "trainer_state.json"), dir.string());
  auto check = compare_fingerprints(state.fingerprint, fingerprint_, cfg_.allow_schedule_change);
  for (const auto& note : check.notes) log(note);
  const auto& diffs = check.differences;
  if (!diffs.empty()) {
    std::string msg = str(dir.string(), ": settings that change the result differ from the checkpoint's:");
    for (const auto& d : diffs) msg += "\n  " + d;
    msg += "\nUse the same settings, a new --output-dir, or --resume-from-checkpoint none to start over.";
    fail(msg);
  }
  auto lora_file = lora::load_lora_file(dir / "pytorch_lora_weights.safetensors");
  lora::apply_lora(*model_.unet, lora_file.components.at("unet"), dir.string());
  if (cfg_.train_text_encoder) {
    lora::apply_lora(*model_.text.text_encoder, lora_file.components.at("text_encoder"), dir.string());
    if (model_.sdxl) lora::apply_lora(*model_.text.text_encoder_2, lora_file.components.at("text_encoder_2"), dir.string());
  }
  auto opt = safetensors::File::open(dir / "optimizer.safetensors");
  optimizer_->load_state(opt.load_all(), opt.metadata(), std::stoll(opt.metadata().at("step")),
                         (dir / "optimizer.safetensors").string());
  scaler_->load_metadata(opt.metadata(), (dir / "optimizer.safetensors").string());
  at::Generator default_gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the default generator
  default_gen.set_state(bytes_tensor(base64_decode(state.default_rng_state, "default_rng_state")));
  if (device_.is_cuda() && !state.cuda_rng_state.empty()) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(device_);
    cuda_gen.set_state(bytes_tensor(base64_decode(state.cuda_rng_state, "cuda_rng_state")));
  }
  state_ = state;
  state_.fingerprint = fingerprint_;
  last_checkpoint_step_ = state_.global_step;
  if (state.world_size != dist_->world_size())
    log(str("the checkpoint was written by ", state.world_size, " worker(s), this run has ", dist_->world_size(),
            ": the global batch and the data order stay the same"));
  log(str("resumed from ", dir.string(), " at step ", state_.global_step, " of ", cfg_.num_steps));
  return true;
}

// Samples first_n .. first_n + count - 1 of a stream: crops drawn and latents encoded as one batch, then
// each sample's posterior noise, diffusion noise and timestep from its own generator (on the CPU, so a
// GPU run draws the same numbers), moved to the device.
std::vector<Trainer::Sample> Trainer::draw_samples(ImageSet& set, DataOrder& order, uint64_t stream, int64_t first_n,
                                                   int64_t count) {
  std::vector<at::Generator> gens;
  std::vector<int64_t> indices;
  for (int64_t n = first_n; n < first_n + count; ++n) {
    gens.push_back(sample_generator(cfg_.seed, stream, n));
    indices.push_back(order.item(n));
  }
  auto examples = set.examples(indices, model_, gens);
  std::vector<Sample> out(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    auto& s = out[i];
    auto& gen = gens[i];
    s.example = std::move(examples[i]);
    const auto shape = s.example.latent_mean.sizes();
    s.eps = train::to_device_async(torch::randn(shape, gen), device_);
    auto noise = draw_training_noise(shape, cfg_.noise_offset, cfg_.input_perturbation, gen);
    s.noise = train::to_device_async(noise.target, device_);
    s.input_noise = cfg_.input_perturbation > 0 ? train::to_device_async(noise.input, device_) : s.noise;
    s.timestep = torch::randint(0, ddpm_->num_train_timesteps(), {1}, gen).item<int64_t>();
  }
  return out;
}

std::vector<torch::Tensor> Trainer::trainable_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& g : optimizer_->groups())
    for (const auto& [name, p] : g.params) out.push_back(p);
  return out;
}

// One optimizer step: gradient_accumulation micro-batches (this worker's share of each global batch),
// gradients averaged over workers, then (fp16) unscale and overflow check, clip, AdamW, LR schedule.
// Nothing here reads the device except the fp16 overflow flag and, every --log-every steps, the loss.
void Trainer::train_step() {
  // The schedule counts optimizer steps taken: a step the loss scaler skips does not advance it (as
  // accelerate's scheduler after a skipped GradScaler step). Without fp16 this is the global step.
  const double lr_mult = lr_multiplier(schedule_, cfg_.lr, optimizer_->step_count());
  const double scaling = model_.vae->config().scaling_factor;
  const double shift = model_.vae->config().shift_factor.value_or(0.0);
  const auto dtype = weight_dtype(cfg_.mixed_precision);
  const int64_t per_rank = cfg_.batch_size, global = per_rank * dist_->world_size();
  torch::Tensor loss_sum;  // fp32, on the device
  for (int64_t micro = 0; micro < cfg_.gradient_accumulation; ++micro) {
    // Batch: this worker's instance samples, then as many class samples (prior preservation).
    auto batch = draw_samples(*instances_, *instance_order_, kInstanceStream,
                              state_.instance_samples + dist_->rank() * per_rank, per_rank);
    state_.instance_samples += global;
    if (classes_) {
      auto prior = draw_samples(*classes_, *class_order_, kClassStream, state_.class_samples + dist_->rank() * per_rank,
                                per_rank);
      batch.insert(batch.end(), std::make_move_iterator(prior.begin()), std::make_move_iterator(prior.end()));
      state_.class_samples += global;
    }
    std::vector<torch::Tensor> means, stds, eps, noises, input_noises, time_ids;
    std::vector<int64_t> ts;
    std::vector<std::string> captions;
    for (auto& s : batch) {
      means.push_back(s.example.latent_mean);
      stds.push_back(s.example.latent_std);
      eps.push_back(s.eps);
      noises.push_back(s.noise);
      input_noises.push_back(s.input_noise);
      ts.push_back(s.timestep);
      time_ids.push_back(s.example.time_ids);
      captions.push_back(s.example.caption);
    }
    // latents ~ VAE posterior, scaled like the pipeline's latents: [B, C, h, w]
    auto latents = ((torch::stack(means) + torch::stack(stds) * torch::stack(eps)) - shift) * scaling;
    // noise + timesteps -> noisy latents
    auto noise = torch::stack(noises);
    auto timesteps_host = torch::tensor(ts, torch::kInt64);
    auto timesteps = train::to_device_async(timesteps_host, device_);
    auto noisy = ddpm_->add_noise(latents, cfg_.input_perturbation > 0 ? torch::stack(input_noises) : noise, timesteps);
    // predict
    auto emb = embedder_->embed(model_, captions);
    torch::Tensor pooled, tids;
    if (model_.sdxl) {
      pooled = emb.pooled_prompt_embeds.to(device_, dtype);
      tids = train::to_device_async(torch::stack(time_ids), device_).to(dtype);
    }
    auto pred = model_.unet->forward(noisy.to(device_, dtype), timesteps, emb.prompt_embeds.to(device_, dtype),
                                     pooled, tids);
    // target by prediction type, loss (+ prior), backward
    auto target = ddpm_->training_target(latents, noise, timesteps);
    torch::Tensor snr_weights;
    if (cfg_.snr_gamma > 0) {
      auto t_instance = timesteps_host.slice(0, 0, per_rank);
      auto weights = min_snr_weights(ddpm_->snr(t_instance), cfg_.snr_gamma, ddpm_->prediction_type());
      snr_weights = train::to_device_async(weights, device_);
    }
    auto loss = dreambooth_loss(pred, target, classes_ != nullptr, cfg_.prior_loss_weight, snr_weights);
    scaler_->scale(loss.total / static_cast<double>(cfg_.gradient_accumulation)).backward();
    loss_sum = loss_sum.defined() ? loss_sum + loss.total.detach() : loss.total.detach();
  }
  dist_->average_gradients(trainable_parameters());
  if (test_nan_steps_.count(state_.global_step + 1)) optimizer_->gradients().front().fill_(NAN);
  // unscale (fp16) -> skip on inf/nan, else clip -> AdamW; gradients are the same on every worker here,
  // so every worker makes the same decision.
  const bool overflow = scaler_->unscale_and_check(optimizer_->gradients());
  if (!overflow) {
    if (cfg_.max_grad_norm > 0) optimizer_->clip_grad_norm(cfg_.max_grad_norm);
    optimizer_->step(lr_mult);
  }
  scaler_->update(overflow);
  optimizer_->zero_grad();
  ++state_.global_step;
  state_.epoch = instance_order_->epoch_of(state_.instance_samples);
  state_.lr_multiplier = lr_mult;
  if (overflow && dist_->is_main())
    log(str("step ", state_.global_step, ": inf/nan in the fp16 gradients; optimizer step skipped, loss scale now ",
            scaler_->scale_value()));
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  pending_losses_.push_back(
      {state_.global_step, loss_sum / static_cast<double>(cfg_.gradient_accumulation), cfg_.lr * lr_mult, now});
  if (state_.global_step % std::max<int64_t>(1, cfg_.log_every) == 0 || state_.global_step == cfg_.num_steps)
    record_losses();
}

// Reads the pending losses in one copy and writes them to metrics.jsonl, one line per step. Called at
// the same steps on every worker (a collective averages each loss over workers).
void Trainer::record_losses() {
  if (pending_losses_.empty()) return;
  std::vector<torch::Tensor> losses;
  for (const auto& p : pending_losses_) losses.push_back(p.loss);
  const auto host = torch::stack(losses).to(torch::kCPU, torch::kFloat64);
  const double* values = host.data_ptr<double>();
  for (size_t i = 0; i < pending_losses_.size(); ++i) {
    const auto& p = pending_losses_[i];
    last_loss_ = static_cast<float>(dist_->mean(values[i]));
    if (dist_->is_main()) metrics_->record(p.step, last_loss_, p.lr, p.unix_time);
  }
  pending_losses_.clear();
}

lora::LoRAWeights Trainer::current_lora(bool copy) {
  const auto& layers = lora_layers();
  lora::LoRAWeights w;
  for (const auto& [component, list] : layers) w.components[component] = lora::collect_lora(list);
  if (copy)
    for (auto& [component, modules] : w.components)
      for (auto& [path, m] : modules) {
        m.down = m.down.to(torch::kCPU, torch::kFloat32);
        m.up = m.up.to(torch::kCPU, torch::kFloat32);
      }
  return w;
}

const std::map<std::string, Trainer::LayerList>& Trainer::lora_layers() {
  if (lora_layers_.empty()) {  // found once: walking the module tree costs ~1 ms
    lora_layers_["unet"] = lora::lora_layers(*model_.unet);
    if (cfg_.train_text_encoder) {
      lora_layers_["text_encoder"] = lora::lora_layers(*model_.text.text_encoder);
      if (model_.sdxl) lora_layers_["text_encoder_2"] = lora::lora_layers(*model_.text.text_encoder_2);
    }
  }
  return lora_layers_;
}

// What a checkpoint holds, captured in two copies on the training thread: every LoRA weight and every
// optimizer moment each in one concatenated tensor. Views of the live tensors are made once (they are
// updated in place), so capturing costs two ops whatever the number of layers; naming, splitting and
// serialising happen in `prepare` on the writer thread.
checkpoint::CheckpointContents Trainer::snapshot() {
  if (!flat_) {
    auto layout = std::make_shared<FlatLayout>();
    for (const auto& [component, list] : lora_layers())
      for (const auto& [path, linear] : list) {
        for (const auto* w : {&linear->lora->down->weight, &linear->lora->up->weight}) {
          layout->lora_views.push_back(w->detach().view({-1}));  // a view: it follows in-place updates
          layout->lora_shapes.push_back(w->sizes().vec());
        }
        layout->lora_modules.push_back({component, path, linear->lora->options.alpha});
      }
    for (auto& [name, t] : optimizer_->state_tensors()) {
      layout->moment_views.push_back(t.detach().view({-1}));
      layout->moment_names.push_back(name);
      layout->moment_shapes.push_back(t.sizes().vec());
    }
    flat_ = layout;
  }
  // On CUDA both copies are asynchronous (pinned memory, side stream); the writer thread waits for them.
  auto lora_flat = train::copy_to_host_async(torch::cat(flat_->lora_views));
  auto moments_flat = train::copy_to_host_async(torch::cat(flat_->moment_views));
  TrainerState s = state_;
  s.world_size = dist_->world_size();
  s.default_rng_state = base64_encode(tensor_bytes(at::detail::getDefaultCPUGenerator().get_state()));
  if (device_.is_cuda())
    s.cuda_rng_state = base64_encode(tensor_bytes(at::globalContext().defaultGenerator(device_).get_state()));
  s.fingerprint = fingerprint_;
  checkpoint::CheckpointContents c;
  auto optimizer_metadata = scaler_->to_metadata();
  optimizer_metadata["step"] = std::to_string(optimizer_->step_count());
  for (const auto& [key, value] : optimizer_->state_metadata()) optimizer_metadata[key] = value;
  c.prepare = [layout = flat_, lora_flat, moments_flat, s, optimizer_metadata,
               metadata = lora_metadata(cfg_, /*baked=*/false)](checkpoint::CheckpointContents& c) {
    lora_flat.wait();
    moments_flat.wait();
    lora::LoRAWeights weights;
    const auto lora = split_flat(lora_flat.host, layout->lora_shapes);  // down, up of each module in turn
    for (size_t i = 0; i < layout->lora_modules.size(); ++i) {
      const auto& m = layout->lora_modules[i];
      weights.components[m.component][m.path] = {lora[2 * i], lora[2 * i + 1], m.alpha};
    }
    auto lora_tensors = lora::to_diffusers_tensors(weights, /*bake_alpha_into_up=*/false);
    c.add_tensors("pytorch_lora_weights.safetensors", {lora_tensors.begin(), lora_tensors.end()}, metadata);
    const auto moments = split_flat(moments_flat.host, layout->moment_shapes);
    std::vector<std::pair<std::string, torch::Tensor>> opt;
    for (size_t i = 0; i < moments.size(); ++i) opt.emplace_back(layout->moment_names[i], moments[i]);
    c.add_tensors("optimizer.safetensors", std::move(opt), optimizer_metadata);
    c.add_bytes("trainer_state.json", s.to_json().dump(2) + "\n");
  };
  return c;
}

// Every worker holds the same LoRA weights; a cheap checksum compared across workers catches divergence
// before a checkpoint records it. Only the main worker writes.
void Trainer::save_checkpoint() {
  if (last_checkpoint_step_ == state_.global_step) return;
  record_losses();  // metrics.jsonl holds every step up to the checkpoint before it is written
  if (dist_->enabled()) {
    double checksum = 0;
    for (const auto& p : trainable_parameters()) checksum += p.detach().to(torch::kFloat64).sum().item<double>();
    dist_->check_equal(checksum, "the LoRA weight checksum at step " + std::to_string(state_.global_step));
  }
  if (!dist_->is_main()) {
    last_checkpoint_step_ = state_.global_step;
    return;
  }
  // Everything the step loop spends on a checkpoint counts as its stall.
  auto t0 = Clock::now();
  auto snap = snapshot();
  // The loss curve is redrawn beside each checkpoint, on the writer thread too.
  snap.prepare = [prepare = std::move(snap.prepare), points = metrics_->points(),
                  svg = out_ / "loss.svg"](checkpoint::CheckpointContents& c) {
    prepare(c);
    try {
      write_file_atomically(svg, render_loss_svg(points));
    } catch (const std::exception& e) {
      log(str("warning: ", svg.string(), " not updated: ", e.what()));
    }
  };
  const double waited = writer_->submit(state_.global_step, std::move(snap));
  if (waited > 0.01) log(str("waited ", waited, " s for the previous checkpoint write to finish"));
  last_checkpoint_step_ = state_.global_step;
  const double stall = std::chrono::duration<double>(Clock::now() - t0).count();
  auto previous = writer_->last();
  schedule_due_->on_checkpoint(state_.global_step, stall, previous ? previous->write_seconds : 0.0);
  metrics_->record_checkpoint(state_.global_step, stall);
}

void Trainer::run_validation() {
  if (cfg_.validation_prompt.empty()) return;
  // The other workers wait without a time limit: sampling may outlast --dist-timeout.
  if (!dist_->is_main()) return dist_->wait_for_main("validation images");
  if (const char* delay = std::getenv("DREAMLORA_TEST_VALIDATION_DELAY_S"))  // test hook: a slow validation
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(delay)));
  torch::NoGradGuard no_grad;
  model_.unet->eval();
  SampleOptions o;
  o.prompt = cfg_.validation_prompt;
  o.steps = cfg_.validation_inference_steps;
  o.sampler = cfg_.validation_sampler;
  o.seed = cfg_.seed;
  o.num_images = cfg_.num_validation_images;
  o.width = o.height = cfg_.resolution;
  // Training mode comes back however validation ends: a failed validation is only a warning.
  struct TrainModeAgain {
    unet::UNet2DConditionModel unet;
    ~TrainModeAgain() { unet->train(); }
  } train_mode_again{model_.unet};
  // The validation images must not disturb the training stream: their generator is their own.
  TaskProgress progress(str("validation images (step ", state_.global_step, ")"), o.steps);
  auto images = text_to_image(model_, o, [&](int64_t done, int64_t total) { progress.update(done, total); });
  progress.finish();
  fs::create_directories(out_ / "validation");
  for (size_t i = 0; i < images.size(); ++i)
    save_png(out_ / "validation" / str("step-", state_.global_step, "-", i, ".png"), images[i],
             sample_metadata(o, static_cast<int64_t>(i), "training LoRA at step " + std::to_string(state_.global_step)));
  log(str("validation images for step ", state_.global_step, " in ", (out_ / "validation").string()));
  dist_->wait_for_main("validation images");
}

void Trainer::publish_outputs() {
  const auto files = final_output_files(out_);
  try {
    mirror_->publish_outputs(out_, files);
    log(str("copied the final outputs (", files.size(), " files) to ", mirror_->describe()));
  } catch (const std::exception& e) {
    warnings_.push_back(str("the final outputs were not copied to ", mirror_->describe(), ": ", e.what(),
                            " (they are complete in ", out_.string(), ")"));
    log("warning: " + warnings_.back());
  }
}

void Trainer::optional_step(const std::string& what, const std::function<void()>& step) {
  try {
    step();
  } catch (const c10::Error& e) {
    warnings_.push_back(str(what, " failed: ", e.what_without_backtrace()));
    log("warning: " + warnings_.back());
  } catch (const std::exception& e) {
    warnings_.push_back(str(what, " failed: ", e.what()));
    log("warning: " + warnings_.back());
  }
}

// The final LoRA files come first: everything after them (validation images, model card, loss curve,
// uploads) is optional and cannot cost the result.
void Trainer::finalize() {
  if (dist_->is_main()) write_final_lora(out_, cfg_, model_, current_lora(true));
  if (cfg_.validation_steps == 0 || state_.global_step % cfg_.validation_steps != 0)
    optional_step("validation images", [&] { run_validation(); });
  if (!dist_->is_main()) return;
  optional_step("model card (README.md)", [&] { write_model_card(out_, cfg_, model_.sdxl); });
  optional_step("loss curve (loss.svg)", [&] { metrics_->write_svg(out_ / "loss.svg"); });
}

int Trainer::run() {
  const auto env = DistributedEnv::from_environment();
  cfg_.device = worker_device(cfg_.device, env);  // "cuda" -> cuda:LOCAL_RANK
  dist_ = std::make_unique<Distributed>(env, torch::Device(cfg_.device), std::chrono::seconds(cfg_.dist_timeout));
  if (dist_->enabled()) log(str("worker ", dist_->rank(), " of ", dist_->world_size()));
  cfg_.validate();
  // The lock is the job's: the main worker takes it before anything is written to the output folder.
  if (dist_->is_main()) lock_.emplace(checkpoint::OutputLock::acquire(cfg_.output_dir));
  load_everything();
  inject_lora();
  build_optimizer();
  const bool resumed = resume();
  dist_->check_equal(static_cast<double>(state_.global_step), "the step resumed from",
                     "every worker must read the same --output-dir (on several machines: shared storage)");
  if (dist_->is_main()) metrics_ = std::make_unique<MetricsLog>(out_, resumed ? state_.global_step : 0);
  checkpoint::WriterOptions wopt;
  wopt.total_limit = static_cast<int>(cfg_.checkpoints_total_limit);
  wopt.on_error = checkpoint::parse_error_policy(cfg_.on_checkpoint_error);
  wopt.synchronous = cfg_.sync_checkpoints;
  writer_ = std::make_unique<checkpoint::CheckpointWriter>(*store_, wopt);
  if (dist_->is_main()) write_file_durably(out_ / "training_config.json", config_to_json(cfg_).dump(2) + "\n");
  // The run that was killed may have died mid-upload: finish that upload (a no-op when it is complete).
  if (resumed && mirror_) writer_->republish(last_checkpoint_step_);

  auto schedule_options =
      checkpoint::CheckpointScheduleOptions::parse(cfg_.checkpointing_steps, cfg_.checkpointing_minutes, cfg_.expected_uptime);
  schedule_options.num_steps = cfg_.num_steps;
  schedule_due_ = std::make_unique<checkpoint::CheckpointSchedule>(schedule_options);

  checkpoint::install_stop_handlers();
  // A cloud's preemption notice behaves exactly like SIGTERM (request_stop), so a preemption costs no steps.
  std::unique_ptr<checkpoint::PreemptionWatcher> watcher;
  if (!cfg_.watch_preemption.empty())
    watcher = std::make_unique<checkpoint::PreemptionWatcher>(checkpoint::PreemptionWatcherOptions::parse(cfg_.watch_preemption));
  checkpoint::Deadline deadline;
  if (!cfg_.max_runtime.empty()) deadline = checkpoint::Deadline(checkpoint::parse_duration(cfg_.max_runtime));

  ProgressBar progress(cfg_.num_steps, state_.global_step, cfg_.log_every);
  // Test hook: behave as if SIGTERM arrived during step N (deterministic interruption for resume tests).
  const char* stop_at = std::getenv("DREAMLORA_TEST_STOP_AT_STEP");
  const int64_t test_stop_step = stop_at ? std::atoll(stop_at) : -1;
  while (state_.global_step < cfg_.num_steps) {
    // All workers stop at the same step boundary when any of them is told to.
    if (dist_->any(checkpoint::stop_requested() || deadline.check())) break;
    const auto step_start = Clock::now();
    train_step();
    schedule_due_->on_step(state_.global_step, std::chrono::duration<double>(Clock::now() - step_start).count());
    if (state_.global_step == test_stop_step) checkpoint::request_stop("DREAMLORA_TEST_STOP_AT_STEP");
    if (dist_->is_main())
      progress.update(state_.global_step, last_loss_, cfg_.lr * state_.lr_multiplier, last_checkpoint_step_);
    // Every worker must agree (the time trigger could fire on one worker only).
    if (dist_->any(schedule_due_->due(state_.global_step))) save_checkpoint();
    if (cfg_.validation_steps > 0 && state_.global_step % cfg_.validation_steps == 0)
      optional_step(str("validation images at step ", state_.global_step), [&] { run_validation(); });
  }
  progress.finish();
  if (state_.global_step < cfg_.num_steps) {
    // Stopped early: the step in flight is finished; checkpoint it and tell the restart loop to go on.
    log(str("stop requested (", checkpoint::stop_requested() ? checkpoint::stop_reason_text() : "by another worker",
            "): writing a checkpoint at step ", state_.global_step));
    save_checkpoint();
    writer_->shutdown();
    dist_->wait_for_main("the checkpoint write");
    log(str("checkpoint at step ", state_.global_step, " written; exiting with status ", checkpoint::kExitStoppedEarly,
            " (run the same command to resume)"));
    return checkpoint::kExitStoppedEarly;
  }
  if (schedule_options.any_trigger()) save_checkpoint();  // a re-run finds the run complete
  finalize();
  writer_->shutdown();
  dist_->wait_for_main("the final outputs");
  if (dist_->is_main()) metrics_->print_summary(writer_->history());
  if (mirror_) publish_outputs();
  if (auto* s3 = dynamic_cast<checkpoint::S3Sink*>(mirror_.get())) {
    s3->retry_failed_upload();
    log(s3->summary());
  }
  if (dist_->is_main() && !warnings_.empty()) {
    log(str("finished with ", warnings_.size(), " warning", warnings_.size() == 1 ? "" : "s",
            " (the final LoRA files are complete in ", out_.string(), "):"));
    for (const auto& w : warnings_) log("  warning: " + w);
  }
  return checkpoint::kExitFinished;
}

}  // namespace

int run_training(const TrainConfig& config) {
  Trainer trainer(config);
  return trainer.run();
}

}  // namespace dreamlora
