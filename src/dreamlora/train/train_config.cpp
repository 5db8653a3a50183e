#include "dreamlora/train/train_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <sstream>

#include "dreamlora/checkpoint/checkpoint_schedule.h"
#include "dreamlora/common/duration.h"
#include "dreamlora/common/error.h"
#include "dreamlora/remote/preemption_watcher.h"
#include "dreamlora/schedulers/sampler.h"
#include "dreamlora/train/lr_schedule.h"

namespace dreamlora::train {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int64_t parse_int(const std::string& flag, const std::string& v) {
  try {
    size_t pos = 0;
    long long n = std::stoll(v, &pos);
    if (pos == v.size()) return n;
  } catch (...) {
  }
  fail(str("--", flag, ": expected an integer, got '", v, "'"));
}

double parse_double(const std::string& flag, const std::string& v) {
  try {
    size_t pos = 0;
    double d = std::stod(v, &pos);
    if (pos == v.size()) return d;
  } catch (...) {
  }
  fail(str("--", flag, ": expected a number, got '", v, "'"));
}

bool parse_bool(const std::string& flag, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v.empty()) return true;
  if (v == "false" || v == "0" || v == "no") return false;
  fail(str("--", flag, ": expected true or false, got '", v, "'"));
}

// Builders for the table rows: one per field type.
OptionSpec text(std::string name, std::vector<std::string> aliases, std::string help,
                std::string TrainConfig::* field, bool changes_result = false) {
  OptionSpec s{std::move(name), std::move(aliases), std::move(help), false, changes_result, false, {}, {}};
  s.set = [field](TrainConfig& c, const std::string& v) { c.*field = v; };
  s.get = [field](const TrainConfig& c) { return io::Json(c.*field); };
  return s;
}
OptionSpec integer(std::string name, std::vector<std::string> aliases, std::string help,
                   int64_t TrainConfig::* field, bool changes_result = false) {
  OptionSpec s{name, std::move(aliases), std::move(help), false, changes_result, false, {}, {}};
  s.set = [field, name](TrainConfig& c, const std::string& v) { c.*field = parse_int(name, v); };
  s.get = [field](const TrainConfig& c) { return io::Json(c.*field); };
  return s;
}
OptionSpec unsigned_integer(std::string name, std::vector<std::string> aliases, std::string help,
                            uint64_t TrainConfig::* field, bool changes_result = false) {
  OptionSpec s{name, std::move(aliases), std::move(help), false, changes_result, false, {}, {}};
  s.set = [field, name](TrainConfig& c, const std::string& v) {
    auto n = parse_int(name, v);
    DL_CHECK(n >= 0, "--", name, ": must not be negative, got ", n);
    c.*field = static_cast<uint64_t>(n);
  };
  s.get = [field](const TrainConfig& c) { return io::Json(c.*field); };
  return s;
}
OptionSpec number(std::string name, std::vector<std::string> aliases, std::string help,
                  double TrainConfig::* field, bool changes_result = false) {
  OptionSpec s{name, std::move(aliases), std::move(help), false, changes_result, false, {}, {}};
  s.set = [field, name](TrainConfig& c, const std::string& v) { c.*field = parse_double(name, v); };
  s.get = [field](const TrainConfig& c) { return io::Json(c.*field); };
  return s;
}
OptionSpec flag(std::string name, std::vector<std::string> aliases, std::string help,
                bool TrainConfig::* field, bool changes_result = false) {
  OptionSpec s{name, std::move(aliases), std::move(help), true, changes_result, false, {}, {}};
  s.set = [field, name](TrainConfig& c, const std::string& v) { c.*field = parse_bool(name, v); };
  s.get = [field](const TrainConfig& c) { return io::Json(c.*field); };
  return s;
}
// A boolean that takes a value (--prodigy-decouple false), for settings whose default is true.
OptionSpec boolean(std::string name, std::vector<std::string> aliases, std::string help,
                   bool TrainConfig::* field, bool changes_result = false) {
  OptionSpec s = flag(std::move(name), std::move(aliases), std::move(help), field, changes_result);
  s.is_switch = false;
  return s;
}
OptionSpec required(OptionSpec s) {
  s.required = true;
  return s;
}

std::vector<OptionSpec> build_table() {
  using C = TrainConfig;
  const bool R = true;  // changes results: part of the fingerprint
  return {
      required(text("model", {"pretrained_model_name_or_path", "pretrained-model-name-or-path"},
                    "diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                    "scheduler/) or a "
                    "single-file .safetensors checkpoint (original layout; see --model-config)",
                    &C::model)),
      text("variant", {}, "weight file variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)",
           &C::variant, R),
      text(
          "model-config", {},
          "for a single-file --model: diffusers folder whose */config.json, tokenizers and scheduler config "
          "describe its architecture (default: the standard configs of the detected family; see --tokenizer)",
          &C::model_config, R),
      text("tokenizer", {},
           "for a single-file --model without --model-config: folder with the CLIP BPE files (vocab.json, "
           "merges.txt), e.g. a Stable Diffusion download's tokenizer/ (the pad token is the family's)",
           &C::tokenizer),
      text("prediction-type", {"prediction_type"},
           "epsilon or v_prediction: replaces the scheduler config's prediction type (the training target "
           "and validation); for a single SD2.x file without --model-config it picks stable-diffusion-2-1 "
           "(v) or 2-1-base (epsilon). Default: the model's",
           &C::prediction_type, R),
      required(text("image-path", {"instance_data_dir", "instance-data-dir"},
                    "folder of instance images (png, jpg, bmp, webp)", &C::image_path)),
      required(text("prompt", {"instance_prompt", "instance-prompt"},
                    "instance prompt, e.g. \"a photo of sks dog\"", &C::prompt, R)),
      text("identifier", {}, "the rare token of the subject (e.g. sks); must appear in --prompt",
           &C::identifier),
      text("caption-extension", {"caption_extension"},
           "caption files beside the images: NAME<ext> (kohya, SimpleTuner); images without one use --prompt",
           &C::caption_extension, R),
      text("caption-template", {"caption_template"},
           "wraps each caption file's text, e.g. \"a photo of sks dog, {caption}\" ({prompt}: --prompt)",
           &C::caption_template, R),
      flag("prior-preservation", {"with_prior_preservation", "with-prior-preservation"},
           "DreamBooth prior preservation with class images", &C::prior_preservation, R),
      text("class-image-path", {"class_data_dir", "class-data-dir"},
           "folder of class images (missing ones are generated)", &C::class_image_path),
      text("class-prompt", {"class_prompt"}, "class prompt, e.g. \"a photo of dog\"", &C::class_prompt, R),
      integer("num-class-images", {"num_class_images"}, "class images wanted for prior preservation",
              &C::num_class_images, R),
      number("prior-loss-weight", {"prior_loss_weight"}, "weight of the prior-preservation loss",
             &C::prior_loss_weight, R),
      integer("sample-batch-size", {"sample_batch_size"}, "batch size when generating class images",
              &C::sample_batch_size),
      integer("resolution", {}, "training resolution (images are resized and cropped to it)", &C::resolution,
              R),
      flag("center-crop", {"center_crop"}, "center crop instead of a random crop", &C::center_crop, R),
      flag("random-flip", {"random_flip", "flip_aug"}, "randomly flip images horizontally", &C::random_flip,
           R),
      flag("enable-bucket", {"enable_bucket"},
           "aspect-ratio bucketing (kohya): each image to the bucket of nearest aspect ratio with about "
           "--resolution^2 "
           "pixels, resized to cover it and cropped; batches come from one bucket",
           &C::enable_bucket, R),
      integer("min-bucket-reso", {"min_bucket_reso"}, "smallest bucket side", &C::min_bucket_reso, R),
      integer("max-bucket-reso", {"max_bucket_reso"}, "largest bucket side", &C::max_bucket_reso, R),
      integer("bucket-reso-steps", {"bucket_reso_steps"},
              "bucket sides are multiples of this (a multiple of 8)", &C::bucket_reso_steps, R),
      integer("repeats", {}, "how many times each instance image is repeated per epoch", &C::repeats, R),
      flag("cache-latents", {"cache_latents"},
           "encode every image with the VAE once before training and keep only its latent distribution "
           "(mean, std; the sample is still drawn per step, so results are bit-identical); both flips with "
           "--random-flip; images larger than the training size need --center-crop",
           &C::cache_latents),
      flag("cache-latents-to-disk", {"cache_latents_to_disk"},
           "--cache-latents, with each latent distribution also kept in <output-dir>/latent-cache/ (one "
           "safetensors file per image and flip): a resumed or repeated run loads the entries whose image "
           "bytes, size, crop, flip, VAE, VAE dtype and device still match and encodes the others again; "
           "deleting the folder is always safe",
           &C::cache_latents_to_disk),
      integer("batch-size", {"train_batch_size", "train-batch-size"},
              "images per step (instance images; prior doubles it)", &C::batch_size, R),
      integer("gradient-accumulation", {"gradient_accumulation_steps", "gradient-accumulation-steps"},
              "micro-batches per optimizer step", &C::gradient_accumulation, R),
      integer("num-steps", {"max_train_steps", "max-train-steps"},
              "total optimizer steps (a resumed run completes them)", &C::num_steps),
      integer("epochs", {"num_train_epochs", "num-train-epochs", "max_train_epochs"},
              "train for this many epochs instead of --num-steps", &C::epochs),
      number("lr", {"learning_rate", "learning-rate"}, "learning rate of the UNet LoRA", &C::lr, R),
      flag("scale-lr", {"scale_lr"}, "multiply the LR by batch size x accumulation", &C::scale_lr, R),
      text("scheduler", {"lr_scheduler", "lr-scheduler"},
           "LR schedule: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial",
           &C::scheduler, R),
      integer("warmup-steps", {"lr_warmup_steps", "lr-warmup-steps"}, "LR warm-up steps", &C::warmup_steps,
              R),
      integer("num-cycles", {"lr_num_cycles", "lr-num-cycles", "lr_scheduler_num_cycles"},
              "cycles of cosine_with_restarts", &C::num_cycles, R),
      number("lr-power", {"lr_power", "lr_scheduler_power"}, "power of the polynomial schedule", &C::lr_power,
             R),
      number("adam-beta1", {"adam_beta1"}, "AdamW beta1", &C::adam_beta1, R),
      number("adam-beta2", {"adam_beta2"}, "AdamW beta2", &C::adam_beta2, R),
      number("adam-weight-decay", {"adam_weight_decay", "weight_decay"},
             "weight decay (AdamW and Prodigy decoupled; SGD adds it to the gradient, as torch's)",
             &C::adam_weight_decay, R),
      number("adam-epsilon", {"adam_epsilon"}, "AdamW epsilon", &C::adam_epsilon, R),
      number("max-grad-norm", {"max_grad_norm"}, "gradient clipping norm (0: off)", &C::max_grad_norm, R),
      unsigned_integer("seed", {}, "random seed (data order, noise, timesteps, LoRA init)", &C::seed, R),
      number("snr-gamma", {"snr_gamma", "min_snr_gamma"},
             "Min-SNR weighting gamma (0: off; 5.0 is recommended)", &C::snr_gamma, R),
      number("noise-offset", {"noise_offset"}, "noise offset", &C::noise_offset, R),
      number("input-perturbation", {"input_perturbation", "ip_noise_gamma"},
             "input perturbation (diffusers): the noisy input uses noise + p * randn, the target the plain "
             "noise "
             "(0: off; 0.1 is the paper's)",
             &C::input_perturbation, R),
      text("optimizer", {"optimizer_type", "optimizer-type"},
           "adamw, sgd or prodigy (Prodigy adapts the step size: use --lr 1.0; the text encoder then gets "
           "--lr too)",
           &C::optimizer, R),
      number("sgd-momentum", {"momentum"}, "SGD momentum (torch.optim.SGD)", &C::sgd_momentum, R),
      number("sgd-dampening", {"dampening"}, "SGD dampening", &C::sgd_dampening, R),
      flag("sgd-nesterov", {"nesterov"}, "SGD with Nesterov momentum", &C::sgd_nesterov, R),
      number("prodigy-beta3", {"prodigy_beta3"}, "Prodigy beta3 (0: sqrt(--adam-beta2))", &C::prodigy_beta3,
             R),
      boolean("prodigy-decouple", {"prodigy_decouple"}, "Prodigy: AdamW-style decoupled weight decay",
              &C::prodigy_decouple, R),
      boolean("prodigy-use-bias-correction", {"prodigy_use_bias_correction"},
              "Prodigy: Adam's bias correction", &C::prodigy_use_bias_correction, R),
      boolean("prodigy-safeguard-warmup", {"prodigy_safeguard_warmup"},
              "Prodigy: leave the LR out of the d estimate's denominator (for warm-up)",
              &C::prodigy_safeguard_warmup, R),
      number("prodigy-d0", {"prodigy_d0", "d0"}, "Prodigy: initial step size estimate d0", &C::prodigy_d0, R),
      number("prodigy-d-coef", {"prodigy_d_coef", "d_coef"}, "Prodigy: coefficient of the step size estimate",
             &C::prodigy_d_coef, R),
      integer("rank", {"network_dim"}, "LoRA rank", &C::rank, R),
      number("lora-alpha", {"lora_alpha", "network_alpha"}, "LoRA alpha (default: equal to rank, scale 1)",
             &C::lora_alpha, R),
      number("lora-dropout", {"lora_dropout", "network_dropout"}, "LoRA dropout", &C::lora_dropout, R),
      text("lora-targets", {"lora_targets"},
           "UNet modules to adapt (comma list); kohya's wider set adds "
           "proj_in,proj_out,ff.net.0.proj,ff.net.2",
           &C::lora_targets, R),
      flag("train-text-encoder", {"train_text_encoder"}, "also train LoRA on the text encoder(s)",
           &C::train_text_encoder, R),
      number("text-encoder-lr", {"text_encoder_lr"}, "learning rate of the text-encoder LoRA",
             &C::text_encoder_lr, R),
      text("text-encoder-targets", {}, "text-encoder modules to adapt (comma list; add fc1,fc2 for the MLP)",
           &C::text_encoder_targets, R),
      text(
          "mixed-precision", {"mixed_precision"},
          "no, fp16 or bf16: frozen weights in that dtype; LoRA, optimizer, norms, softmax and loss in fp32; "
          "fp16 adds dynamic loss scaling and needs --device cuda",
          &C::mixed_precision, R),
      flag("allow-tf32", {"allow_tf32"},
           "allow TF32 tensor cores for fp32 matmuls on Ampere+ GPUs (faster, ~1e-3 "
           "relative precision)",
           &C::allow_tf32),
      flag("deterministic", {},
           "deterministic GPU kernels and cuDNN, so a resumed GPU run ends byte-identical to an "
           "uninterrupted one on the same GPU (slower); without it, speed-first kernels",
           &C::deterministic),
      flag("gradient-checkpointing", {"gradient_checkpointing"},
           "recompute activations in backward to save memory", &C::gradient_checkpointing),
      text("device", {}, "cpu or cuda[:N]", &C::device),
      integer("dist-timeout", {}, "seconds before a silent worker fails the job (data-parallel runs)",
              &C::dist_timeout),
      text("validation-prompt", {"validation_prompt"}, "prompt for validation images", &C::validation_prompt),
      integer("num-validation-images", {"num_validation_images"}, "validation images per run",
              &C::num_validation_images),
      integer("validation-steps", {"validation_steps"},
              "make validation images every N steps (0: at the end)", &C::validation_steps),
      integer("validation-inference-steps", {}, "sampler steps for validation images",
              &C::validation_inference_steps),
      text("validation-sampler", {}, "sampler for validation images", &C::validation_sampler),
      integer("log-every", {"logging_steps"}, "log a line every N steps when not on a terminal",
              &C::log_every),
      text("report-to", {"report_to"},
           "jsonl (metrics.jsonl), tensorboard (event files in <output-dir>/logs), all "
           "or none",
           &C::report_to),
      text("output-dir", {"output_dir", "project-name", "project_name"},
           "where checkpoints and the final LoRA go", &C::output_dir),
      text("checkpointing-steps", {"checkpointing_steps"},
           "write a checkpoint every N optimizer steps (0: off; auto: Young/Daly interval from the measured "
           "cost)",
           &C::checkpointing_steps),
      number("checkpointing-minutes", {}, "also write a checkpoint every M minutes of wall time (0: off)",
             &C::checkpointing_minutes),
      text("expected-uptime", {}, "mean time between preemptions for --checkpointing-steps auto (default 2h)",
           &C::expected_uptime),
      text("watch-preemption", {}, "poll the cloud's preemption notice: aws, gcp, azure or a URL",
           &C::watch_preemption),
      text("checkpoint-mirror", {"mirror"},
           "also keep checkpoints in s3://bucket/prefix or a directory (resume on a fresh machine)",
           &C::checkpoint_mirror),
      text("s3-endpoint", {}, "S3-compatible endpoint URL (default: AWS_ENDPOINT_URL or AWS)",
           &C::s3_endpoint),
      text("resume-from-checkpoint", {"resume_from_checkpoint"},
           "latest (newest valid checkpoint in --output-dir, or start fresh), a checkpoint path, or none",
           &C::resume_from_checkpoint),
      integer("checkpoints-total-limit", {"checkpoints_total_limit"}, "keep at most K checkpoints (0: all)",
              &C::checkpoints_total_limit),
      text("on-checkpoint-error", {}, "stop | continue when a checkpoint cannot be written",
           &C::on_checkpoint_error),
      text("max-runtime", {}, "stop cleanly (with a checkpoint) after this long, e.g. 90m, 2h",
           &C::max_runtime),
      flag("sync-checkpoints", {}, "write checkpoints on the training thread (for comparison)",
           &C::sync_checkpoints),
      text("save-format", {"save_format"}, "diffusers | kohya | both", &C::save_format),
      flag("allow-schedule-change", {},
           "resume with another --num-steps although the LR schedule (linear, cosine, ...) depends on it",
           &C::allow_schedule_change),
  };
}

std::string normalise(const std::string& name) {
  std::string n = name;
  while (!n.empty() && n[0] == '-') n.erase(0, 1);
  return n;
}

}  // namespace

const std::vector<OptionSpec>& train_options() {
  static const std::vector<OptionSpec> table = build_table();
  return table;
}

const OptionSpec* find_train_option(const std::string& name_or_alias) {
  const std::string n = normalise(name_or_alias);
  std::string dashed = n;
  std::replace(dashed.begin(), dashed.end(), '_', '-');
  for (const auto& o : train_options()) {
    if (o.name == n || o.name == dashed) return &o;
    for (const auto& a : o.aliases)
      if (a == n) return &o;
  }
  return nullptr;
}

void TrainConfig::validate() const {
  DL_CHECK(!model.empty(), "--model is required: a diffusers pipeline folder");
  DL_CHECK(!image_path.empty(), "--image-path is required: the folder of instance images");
  DL_CHECK(prediction_type.empty() || prediction_type == "epsilon" || prediction_type == "v_prediction",
           "--prediction-type must be epsilon or v_prediction, got '", prediction_type, "'");
  DL_CHECK(!prompt.empty(), "--prompt is required, e.g. \"a photo of sks dog\"");
  if (!identifier.empty())
    DL_CHECK(prompt.find(identifier) != std::string::npos, "--prompt \"", prompt,
             "\" does not contain the identifier '", identifier, "' given with --identifier");
  if (prior_preservation) {
    DL_CHECK(!class_prompt.empty(), "--prior-preservation needs --class-prompt, e.g. \"a photo of dog\"");
    DL_CHECK(!class_image_path.empty(),
             "--prior-preservation needs --class-image-path (a folder; missing images are generated)");
    DL_CHECK(num_class_images > 0, "--num-class-images must be positive, got ", num_class_images);
  }
  DL_CHECK(caption_extension.size() >= 2 && caption_extension[0] == '.',
           "--caption-extension must start with a dot, e.g. .txt or .caption, got '", caption_extension, "'");
  DL_CHECK(caption_template.empty() || caption_template.find("{caption}") != std::string::npos,
           "--caption-template \"", caption_template, "\" has no {caption} placeholder");
  DL_CHECK(resolution >= 8 && resolution % 8 == 0, "--resolution must be a positive multiple of 8, got ",
           resolution);
  if (enable_bucket) {
    DL_CHECK(!prior_preservation,
             "--enable-bucket with --prior-preservation is not supported: the class images are "
             "square, the instance batches are not (use one or the other)");
    DL_CHECK(bucket_reso_steps >= 8 && bucket_reso_steps % 8 == 0,
             "--bucket-reso-steps must be a positive multiple of 8, got ", bucket_reso_steps);
    DL_CHECK(min_bucket_reso >= bucket_reso_steps && min_bucket_reso <= resolution &&
                 resolution <= max_bucket_reso,
             "--min-bucket-reso (", min_bucket_reso, ") <= --resolution (", resolution,
             ") <= --max-bucket-reso (", max_bucket_reso,
             ") is needed, with --min-bucket-reso at least --bucket-reso-steps (", bucket_reso_steps, ")");
  }
  DL_CHECK(batch_size >= 1, "--batch-size must be at least 1, got ", batch_size);
  DL_CHECK(gradient_accumulation >= 1, "--gradient-accumulation must be at least 1, got ",
           gradient_accumulation);
  DL_CHECK(num_steps >= 1 || epochs >= 1, "--num-steps must be at least 1, got ", num_steps);
  DL_CHECK(repeats >= 1, "--repeats must be at least 1, got ", repeats);
  DL_CHECK(lr > 0, "--lr must be positive, got ", lr);
  DL_CHECK(rank >= 1, "--rank must be at least 1, got ", rank);
  DL_CHECK(lora_dropout >= 0 && lora_dropout < 1, "--lora-dropout must be in [0, 1), got ", lora_dropout);
  check_lr_schedule_name(scheduler);
  DL_CHECK(warmup_steps >= 0, "--warmup-steps must not be negative");
  DL_CHECK(mixed_precision == "no" || mixed_precision == "fp16" || mixed_precision == "bf16",
           "--mixed-precision must be no, fp16 or bf16, got '", mixed_precision, "'");
  DL_CHECK(
      mixed_precision != "fp16" || device.rfind("cuda", 0) == 0,
      "--mixed-precision fp16 needs --device cuda: fp16 training (with its loss scaling) runs on GPUs only; "
      "on --device ",
      device, " use --mixed-precision bf16 or no");
  DL_CHECK(save_format == "diffusers" || save_format == "kohya" || save_format == "both",
           "--save-format must be diffusers, kohya or both, got '", save_format, "'");
  DL_CHECK(on_checkpoint_error == "stop" || on_checkpoint_error == "continue",
           "--on-checkpoint-error must be stop or continue, got '", on_checkpoint_error, "'");
  checkpoint::CheckpointScheduleOptions::parse(checkpointing_steps, checkpointing_minutes, expected_uptime);
  if (!watch_preemption.empty()) remote::PreemptionWatcherOptions::parse(watch_preemption);
  DL_CHECK(checkpoints_total_limit >= 0, "--checkpoints-total-limit must not be negative");
  DL_CHECK(snr_gamma >= 0, "--snr-gamma must not be negative");
  DL_CHECK(!lora_target_list().empty(), "--lora-targets is empty");
  DL_CHECK(device == "cpu" || device.rfind("cuda", 0) == 0, "--device must be cpu or cuda[:N], got '", device,
           "'");
  validate_late_settings();
}

// Settings first used after training (validation images) or deep inside it: a bad value must stop the
// run before the first step, not after the last one.
void TrainConfig::validate_late_settings() const {
  DL_CHECK(
      !(gradient_checkpointing && lora_dropout > 0), "--gradient-checkpointing with --lora-dropout ",
      lora_dropout,
      " gives wrong gradients (the recomputed forward draws another dropout mask): use one or the other");
  DL_CHECK(epochs >= 0, "--epochs must not be negative, got ", epochs);
  DL_CHECK(num_cycles >= 1, "--num-cycles must be at least 1, got ", num_cycles);
  DL_CHECK(prior_loss_weight >= 0, "--prior-loss-weight must not be negative, got ", prior_loss_weight);
  DL_CHECK(sample_batch_size >= 1, "--sample-batch-size must be at least 1, got ", sample_batch_size);
  DL_CHECK(adam_beta1 >= 0 && adam_beta1 < 1, "--adam-beta1 must be in [0, 1), got ", adam_beta1);
  DL_CHECK(adam_beta2 >= 0 && adam_beta2 < 1, "--adam-beta2 must be in [0, 1), got ", adam_beta2);
  DL_CHECK(adam_epsilon > 0, "--adam-epsilon must be positive, got ", adam_epsilon);
  DL_CHECK(adam_weight_decay >= 0, "--adam-weight-decay must not be negative, got ", adam_weight_decay);
  DL_CHECK(max_grad_norm >= 0, "--max-grad-norm must not be negative, got ", max_grad_norm);
  DL_CHECK(noise_offset >= 0, "--noise-offset must not be negative, got ", noise_offset);
  DL_CHECK(input_perturbation >= 0, "--input-perturbation must not be negative, got ", input_perturbation);
  DL_CHECK(optimizer == "adamw" || optimizer == "sgd" || optimizer == "prodigy",
           "--optimizer must be adamw, sgd or prodigy, got '", optimizer, "'");
  DL_CHECK(sgd_momentum >= 0 && sgd_dampening >= 0,
           "--sgd-momentum and --sgd-dampening must not be negative");
  DL_CHECK(!sgd_nesterov || (sgd_momentum > 0 && sgd_dampening == 0),
           "--sgd-nesterov needs --sgd-momentum > 0 and --sgd-dampening 0");
  DL_CHECK(prodigy_beta3 >= 0 && prodigy_beta3 < 1, "--prodigy-beta3 must be in [0, 1), got ", prodigy_beta3);
  DL_CHECK(prodigy_d0 > 0, "--prodigy-d0 must be positive, got ", prodigy_d0);
  DL_CHECK(prodigy_d_coef > 0, "--prodigy-d-coef must be positive, got ", prodigy_d_coef);
  DL_CHECK(!train_text_encoder || text_encoder_lr > 0, "--text-encoder-lr must be positive, got ",
           text_encoder_lr);
  DL_CHECK(!train_text_encoder || !text_encoder_target_list().empty(), "--text-encoder-targets is empty");
  DL_CHECK(dist_timeout >= 1, "--dist-timeout must be at least 1 second, got ", dist_timeout);
  DL_CHECK(log_every >= 1, "--log-every must be at least 1, got ", log_every);
  DL_CHECK(report_to == "jsonl" || report_to == "tensorboard" || report_to == "all" || report_to == "none",
           "--report-to must be jsonl, tensorboard, all or none, got '", report_to, "'");
  DL_CHECK(!output_dir.empty(), "--output-dir must not be empty");
  if (!max_runtime.empty()) parse_duration(max_runtime);
  DL_CHECK(validation_steps >= 0, "--validation-steps must not be negative (0: at the end), got ",
           validation_steps);
  // Checked whether or not a validation prompt is given: a TOML file may add the prompt later.
  const auto samplers = schedulers::sampler_names();
  if (std::find(samplers.begin(), samplers.end(), validation_sampler) == samplers.end()) {
    std::string list;
    for (const auto& n : samplers) list += (list.empty() ? "" : ", ") + n;
    fail(
        str("--validation-sampler: unknown sampler '", validation_sampler, "' (expected one of ", list, ")"));
  }
  DL_CHECK(num_validation_images >= 1, "--num-validation-images must be at least 1, got ",
           num_validation_images);
  DL_CHECK(validation_inference_steps >= 1, "--validation-inference-steps must be at least 1, got ",
           validation_inference_steps);
}

std::vector<std::string> TrainConfig::lora_target_list() const {
  return split_list(lora_targets);
}
std::vector<std::string> TrainConfig::text_encoder_target_list() const {
  return split_list(text_encoder_targets);
}

void apply_toml_file(TrainConfig& config, const std::string& path) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    fail(str(path, ": invalid TOML: ", e.description(), " (line ", e.source().begin.line, ")"));
  }
  for (const auto& [key, node] : table) {
    const std::string name(key.str());
    const OptionSpec* spec = find_train_option(name);
    DL_CHECK(spec != nullptr, path, ": unknown key '", name,
             "' (keys are the long flag names of `dreamlora train`)");
    std::string value;
    if (node.is_string())
      value = *node.value<std::string>();
    else if (node.is_boolean())
      value = *node.value<bool>() ? "true" : "false";
    else if (node.is_integer())
      value = std::to_string(*node.value<int64_t>());
    else if (node.is_floating_point()) {
      std::ostringstream os;
      os.precision(17);
      os << *node.value<double>();
      value = os.str();
    } else
      fail(str(path, ": key '", name, "' must be a string, number or boolean"));
    spec->set(config, value);
  }
}

io::Json config_to_json(const TrainConfig& config) {
  io::Json out = io::Json::object();
  for (const auto& o : train_options()) out[o.name] = o.get(config);
  return out;
}

std::string options_markdown() {
  const TrainConfig defaults;
  std::ostringstream md;
  md << "| flag | diffusers / other aliases | default | fingerprinted | meaning |\n|---|---|---|---|---|\n";
  for (const auto& o : train_options()) {
    std::string aliases;
    for (const auto& a : o.aliases) aliases += (aliases.empty() ? "" : ", ") + std::string("`--") + a + "`";
    io::Json d = o.get(defaults);
    std::string def = o.required      ? "required"
                      : d.is_string() ? (d.get<std::string>().empty() ? "" : "`" + d.get<std::string>() + "`")
                                      : "`" + d.dump() + "`";
    md << "| `--" << o.name << "` | " << aliases << " | " << def << " | " << (o.changes_result ? "yes" : "")
       << " | " << o.help << " |\n";
  }
  return md.str();
}

io::Json result_settings(const TrainConfig& config) {
  io::Json out = io::Json::object();
  for (const auto& o : train_options())
    if (o.changes_result) out[o.name] = o.get(config);
  return out;
}

}  // namespace dreamlora::train
