#include "dreamlora/train/training_setup.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/train/class_images.h"
#include "dreamlora/train/compute_settings.h"
#include "dreamlora/train/latent_disk_cache.h"
#include "dreamlora/train/train_log.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

torch::Dtype weight_dtype(const std::string& mixed_precision) {
  if (mixed_precision == "fp16") return torch::kFloat16;
  if (mixed_precision == "bf16") return torch::kBFloat16;
  return torch::kFloat32;
}

torch::Device training_device(const TrainConfig& cfg) {
  const torch::Device device(cfg.device);
  DL_CHECK(device.is_cpu() || torch::cuda::is_available(), "--device ", cfg.device,
           ": CUDA is not available in this build of libtorch");
  const auto compute = apply_compute_settings({cfg.deterministic, cfg.allow_tf32});
  if (device.is_cuda() || cfg.deterministic) train_log(compute);
  return device;
}

pipeline::ModelBundle load_base_model(const TrainConfig& cfg, torch::Device device) {
  pipeline::LoadOptions load;
  load.variant = cfg.variant;
  load.model_config = cfg.model_config;
  load.tokenizer = cfg.tokenizer;
  load.prediction_type = cfg.prediction_type;
  load.dtype = weight_dtype(cfg.mixed_precision);
  load.device = device;
  return pipeline::ModelBundle::load(cfg.model, load);
}

schedulers::DDPMScheduler training_noise_schedule(const pipeline::ModelBundle& model) {
  const std::string source = model.scheduler_config_path.empty() ? "the built-in scheduler config"
                                                                 : model.scheduler_config_path.string();
  return schedulers::DDPMScheduler(
      schedulers::SchedulerConfig::from_json(model.scheduler_config, schedulers::kDDPM, source));
}

namespace {

DatasetOptions dataset_options(const TrainConfig& cfg) {
  DatasetOptions o;
  o.resolution = cfg.resolution;
  o.center_crop = cfg.center_crop;
  o.random_flip = cfg.random_flip;
  o.cache_text = !cfg.train_text_encoder;
  return o;
}

}  // namespace

TrainingData load_instance_data(TrainConfig& cfg, int world_size) {
  TrainingData data;
  data.instance_images = list_training_images(cfg.image_path, cfg.prompt, "--image-path",
                                              {cfg.caption_extension, cfg.caption_template});
  const auto& images = data.instance_images;
  DL_CHECK(static_cast<int64_t>(images.size()) * cfg.repeats >= cfg.batch_size, "--batch-size ",
           cfg.batch_size, " is larger than the ", images.size(), " instance images in ", cfg.image_path,
           " (x", cfg.repeats, " repeats)");
  if (cfg.epochs > 0) {
    // --epochs instead of --num-steps: enough optimizer steps to visit every (repeated) image that often.
    const int64_t per_step = cfg.batch_size * cfg.gradient_accumulation * world_size;
    const int64_t count = static_cast<int64_t>(images.size()) * cfg.repeats;
    cfg.num_steps = (cfg.epochs * count + per_step - 1) / per_step;
    train_log(str("--epochs ", cfg.epochs, " over ", count, " images: ", cfg.num_steps, " optimizer steps"));
  }
  auto options = dataset_options(cfg);
  options.buckets = {cfg.enable_bucket, cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso,
                     cfg.bucket_reso_steps};
  data.instances = std::make_unique<ImageSet>(images, options, cfg.repeats);
  data.instance_order =
      cfg.enable_bucket ? std::make_unique<DataOrder>(cfg.seed, data.instances->bucket_ids(), cfg.batch_size)
                        : std::make_unique<DataOrder>(cfg.seed, data.instances->size());
  if (cfg.enable_bucket) train_log(bucket_summary(*data.instances));
  return data;
}

void load_class_data(TrainingData& data, pipeline::ModelBundle& model, const TrainConfig& cfg,
                     Distributed& dist) {
  ensure_class_images(model, cfg, dist.rank(), dist.world_size());
  dist.barrier();
  auto images = list_training_images(cfg.class_image_path, cfg.class_prompt, "--class-image-path",
                                     {cfg.caption_extension, ""});
  images.resize(std::min<size_t>(images.size(), static_cast<size_t>(cfg.num_class_images)));
  data.class_images = images;
  data.classes = std::make_unique<ImageSet>(images, dataset_options(cfg));
  data.class_order = std::make_unique<DataOrder>(cfg.seed + 1, data.classes->size());
}

namespace {

// At most this many entry problems are logged one by one (a changed VAE refuses every entry).
constexpr size_t kLoggedCacheProblems = 5;

void log_latent_disk_cache(const fs::path& dir, const std::vector<std::unique_ptr<LatentDiskCache>>& caches) {
  LatentCacheCounts total;
  std::vector<std::string> problems;
  for (const auto& c : caches) {
    total.reused += c->counts().reused;
    total.encoded += c->counts().encoded;
    total.rewritten += c->counts().rewritten;
    total.unwritten += c->counts().unwritten;
    problems.insert(problems.end(), c->problems().begin(), c->problems().end());
  }
  for (size_t i = 0; i < problems.size() && i < kLoggedCacheProblems; ++i)
    train_log("--cache-latents-to-disk: " + problems[i]);
  if (problems.size() > kLoggedCacheProblems)
    train_log(str("--cache-latents-to-disk: ... and ", problems.size() - kLoggedCacheProblems, " more"));
  train_log(str("--cache-latents-to-disk: ", dir.string(), ": ", total.reused, " reused, ", total.encoded,
                " encoded, ", total.rewritten, " rewritten",
                total.unwritten ? str(", ", total.unwritten, " encoded but not written") : std::string()));
}

}  // namespace

void cache_all_latents(TrainingData& data, pipeline::ModelBundle& model, const TrainConfig& cfg,
                       bool main_worker) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path dir = fs::path(cfg.output_dir) / kLatentCacheDirName;
  std::map<std::string, std::string> context;
  if (cfg.cache_latents_to_disk) {
    context = latent_cache_context(cfg, model);
    if (main_worker) {
      fs::create_directories(dir);
      remove_stale_latent_cache_temps(dir);
    }
  }
  std::vector<std::unique_ptr<LatentDiskCache>> caches;
  int64_t latents = 0;
  for (auto [set, name] :
       {std::make_pair(data.instances.get(), "instance"), std::make_pair(data.classes.get(), "class")}) {
    if (!set) continue;
    if (cfg.cache_latents_to_disk)
      caches.push_back(std::make_unique<LatentDiskCache>(dir, context, name, main_worker));
    set->cache_all_latents(model, cfg.cache_latents_to_disk ? caches.back().get() : nullptr);
    latents += set->cached_latent_count();
  }
  train_log(str("--cache-latents: ", latents, " latent distributions cached in ",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s"));
  if (cfg.cache_latents_to_disk) log_latent_disk_cache(dir, caches);
}

// On SD 1.5 the text encoder is 470 MB of fp32 weights, on SDXL the two are 2.8 GB, kept for nothing
// during the whole run otherwise (diffusers' scripts free them too).
void release_text_encoders(pipeline::ModelBundle& model, TrainingData& data) {
  std::set<std::string> captions;
  for (const auto* set : {data.instances.get(), data.classes.get()})
    if (set)
      for (const auto& image : set->images()) captions.insert(image.caption);
  for (const auto& caption : captions) data.embedder->embed(model, {caption});
  model.text = text::TextEncoders{};
  train_log(str("text encoders released after embedding ", captions.size(), " caption",
                captions.size() == 1 ? "" : "s"));
}

void inject_training_lora(pipeline::ModelBundle& model, const TrainConfig& cfg, torch::Device device) {
  // A generator of its own for the LoRA init: the training draws do not depend on the LoRA size.
  auto init_gen = at::detail::createCPUGenerator(cfg.seed);
  nn::LoRAOptions opts{cfg.rank, cfg.effective_lora_alpha(), cfg.lora_dropout};
  auto report = lora::inject_lora(*model.unet, cfg.lora_target_list(), opts, init_gen);
  train_log("LoRA on the UNet: " + report.summary());
  lora::freeze_all_but_lora(*model.unet);
  if (cfg.train_text_encoder) {
    auto te = lora::inject_lora(*model.text.text_encoder, cfg.text_encoder_target_list(), opts, init_gen);
    train_log("LoRA on text_encoder: " + te.summary());
    lora::freeze_all_but_lora(*model.text.text_encoder);
    if (model.sdxl) {
      auto te2 =
          lora::inject_lora(*model.text.text_encoder_2, cfg.text_encoder_target_list(), opts, init_gen);
      train_log("LoRA on text_encoder_2: " + te2.summary());
      lora::freeze_all_but_lora(*model.text.text_encoder_2);
    }
  }
  for (auto& [name, p] : lora::lora_parameters(*model.unet)) p.set_requires_grad(true);
  model.unet->to(device);
  model.unet->train();
  if (cfg.gradient_checkpointing) model.unet->set_gradient_checkpointing(true);
}

LoRALayers find_lora_layers(pipeline::ModelBundle& model, bool train_text_encoder) {
  LoRALayers layers;
  layers["unet"] = lora::lora_layers(*model.unet);
  if (train_text_encoder) {
    layers["text_encoder"] = lora::lora_layers(*model.text.text_encoder);
    if (model.sdxl) layers["text_encoder_2"] = lora::lora_layers(*model.text.text_encoder_2);
  }
  return layers;
}

std::unique_ptr<Optimizer> make_training_optimizer(pipeline::ModelBundle& model, const TrainConfig& cfg) {
  double lr = cfg.lr, te_lr = cfg.text_encoder_lr;
  if (cfg.scale_lr) {
    lr *= static_cast<double>(cfg.batch_size * cfg.gradient_accumulation);
    te_lr *= static_cast<double>(cfg.batch_size * cfg.gradient_accumulation);
  }
  std::vector<ParamGroup> groups;
  ParamGroup unet_group;
  unet_group.lr = lr;
  for (auto& [name, p] : lora::lora_parameters(*model.unet))
    unet_group.params.emplace_back("unet." + name, p);
  groups.push_back(unet_group);
  if (cfg.train_text_encoder) {
    ParamGroup te;
    te.lr = te_lr;
    for (auto& [name, p] : lora::lora_parameters(*model.text.text_encoder))
      te.params.emplace_back("text_encoder." + name, p);
    if (model.sdxl)
      for (auto& [name, p] : lora::lora_parameters(*model.text.text_encoder_2))
        te.params.emplace_back("text_encoder_2." + name, p);
    groups.push_back(te);
  }
  return make_optimizer(cfg, std::move(groups));  // --optimizer
}

LRScheduleOptions lr_schedule_options(const TrainConfig& cfg) {
  LRScheduleOptions s;
  s.name = cfg.scheduler;
  s.warmup_steps = cfg.warmup_steps;
  s.total_steps = cfg.num_steps;
  s.num_cycles = static_cast<int>(cfg.num_cycles);
  s.power = cfg.lr_power;
  return s;
}

StepOptions step_options(const TrainConfig& cfg, bool prior_preservation) {
  StepOptions o;
  o.gradient_accumulation = cfg.gradient_accumulation;
  o.instance_count = cfg.batch_size;
  o.prior_preservation = prior_preservation;
  o.prior_loss_weight = cfg.prior_loss_weight;
  o.snr_gamma = cfg.snr_gamma;
  o.max_grad_norm = cfg.max_grad_norm;
  o.base_lr = cfg.lr;
  o.schedule = lr_schedule_options(cfg);
  return o;
}

LossScaling make_loss_scaling(const TrainConfig& cfg) {
  LossScaling s;
  const char* test_scaler = std::getenv("DREAMLORA_TEST_LOSS_SCALER");
  s.scaler = std::make_unique<LossScaler>(cfg.mixed_precision == "fp16" || test_scaler != nullptr);
  if (test_scaler) {
    // Test hook: the scaler in any precision, and NaN gradients at the listed (1-based) steps.
    std::stringstream list(test_scaler);
    std::string item;
    while (std::getline(list, item, ','))
      if (!item.empty()) s.poisoned_steps.insert(std::stoll(item));
  }
  return s;
}

}  // namespace dreamlora::train
