// Every setting of `dreamlora train`, and the one option table that drives the CLI flags (AutoTrain
// names, diffusers names as aliases), TOML config files, the resolved-config dump, the README table and
// the checkpoint fingerprint (options marked as changing results).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"

namespace dreamlora::train {

struct TrainConfig {
  // model and data
  std::string model;
  std::string variant;
  std::string model_config;
  std::string tokenizer;        // single file without --model-config: CLIP BPE files
  std::string prediction_type;  // "" (the scheduler config's) | epsilon | v_prediction
  std::string image_path;
  std::string prompt;
  std::string class_image_path;
  std::string class_prompt;
  bool prior_preservation = false;
  int64_t num_class_images = 100;
  double prior_loss_weight = 1.0;
  int64_t sample_batch_size = 4;
  int64_t resolution = 512;
  bool center_crop = false;
  bool random_flip = false;
  bool enable_bucket = false;  // aspect-ratio buckets (kohya) instead of square crops
  int64_t min_bucket_reso = 256;
  int64_t max_bucket_reso = 1024;
  int64_t bucket_reso_steps = 64;
  int64_t repeats = 1;
  bool cache_latents = false;          // encode every image once up front and release the pixels
  bool cache_latents_to_disk = false;  // --cache-latents, kept in <output-dir>/latent-cache between runs
  std::string identifier;              // e.g. "sks": must appear in --prompt (checked when given)
  std::string caption_extension = ".txt";
  std::string caption_template;  // "a photo of sks dog, {caption}": wraps each caption file's text
  // optimisation
  int64_t batch_size = 1;
  int64_t gradient_accumulation = 1;
  int64_t num_steps = 500;
  int64_t epochs = 0;  // alternative to num_steps (0: use num_steps)
  double lr = 1e-4;
  bool scale_lr = false;
  std::string scheduler = "constant";
  int64_t warmup_steps = 0;
  int64_t num_cycles = 1;
  double lr_power = 1.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_weight_decay = 1e-2;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  uint64_t seed = 42;
  double snr_gamma = 0.0;
  double noise_offset = 0.0;
  double input_perturbation = 0.0;  // diffusers: noise + strength * randn for the noisy input only
  std::string optimizer = "adamw";  // adamw | sgd | prodigy
  double sgd_momentum = 0.0;
  double sgd_dampening = 0.0;
  bool sgd_nesterov = false;
  double prodigy_beta3 = 0.0;  // 0: sqrt(adam_beta2)
  bool prodigy_decouple = true;
  bool prodigy_use_bias_correction = true;  // diffusers' scripts' default (the package's is false)
  bool prodigy_safeguard_warmup = true;     // diffusers' scripts' default (the package's is false)
  double prodigy_d0 = 1e-6;
  double prodigy_d_coef = 1.0;
  // LoRA
  int64_t rank = 4;
  double lora_alpha = 0.0;  // 0: equal to rank (diffusers' scripts)
  double lora_dropout = 0.0;
  std::string lora_targets = "to_q,to_k,to_v,to_out.0";
  bool train_text_encoder = false;
  double text_encoder_lr = 5e-6;
  std::string text_encoder_targets = "q_proj,k_proj,v_proj,out_proj";
  // compute
  std::string mixed_precision = "no";
  bool gradient_checkpointing = false;
  bool allow_tf32 = false;     // TF32 matmuls on Ampere+ GPUs
  bool deterministic = false;  // deterministic kernels (byte-identical resume on the same GPU)
  std::string device = "cpu";
  int64_t dist_timeout = 300;  // seconds a collective may take before a dead worker is assumed
  // validation and logging
  std::string validation_prompt;
  int64_t num_validation_images = 2;
  int64_t validation_steps = 0;  // 0: only at the end (when a validation prompt is given)
  int64_t validation_inference_steps = 20;
  std::string validation_sampler = "euler";
  int64_t log_every = 10;
  std::string report_to = "all";  // jsonl (metrics.jsonl), tensorboard (logs/), all or none
  // checkpoints
  std::string output_dir = "output";
  std::string checkpointing_steps = "500";  // N, 0 (off) or auto
  double checkpointing_minutes = 0;         // also checkpoint every M minutes of wall time
  std::string expected_uptime;              // MTBF for --checkpointing-steps auto ("" = 2h)
  std::string watch_preemption;             // aws | gcp | azure | URL
  std::string checkpoint_mirror;            // s3://bucket/prefix or a directory that outlives the machine
  std::string s3_endpoint;                  // S3-compatible endpoint (R2, B2, MinIO); else AWS_ENDPOINT_URL
  std::string resume_from_checkpoint = "latest";
  int64_t checkpoints_total_limit = 0;
  std::string on_checkpoint_error = "stop";
  std::string max_runtime;
  bool sync_checkpoints = false;
  std::string save_format = "both";
  bool allow_schedule_change = false;  // resume with another --num-steps under a step-dependent LR schedule

  // Every check that can be made before loading anything; the message names the flag.
  void validate() const;
  void validate_late_settings() const;
  double effective_lora_alpha() const { return lora_alpha > 0 ? lora_alpha : static_cast<double>(rank); }
  std::vector<std::string> lora_target_list() const;
  std::vector<std::string> text_encoder_target_list() const;
};

struct OptionSpec {
  std::string name;                  // long flag without dashes: "checkpointing-steps"
  std::vector<std::string> aliases;  // diffusers' spelling etc: "checkpointing_steps"
  std::string help;
  bool is_switch = false;       // boolean flag without a value
  bool changes_result = false;  // part of the checkpoint fingerprint
  bool required = false;
  std::function<void(TrainConfig&, const std::string&)> set;  // parses; error names the flag
  std::function<io::Json(const TrainConfig&)> get;
};

const std::vector<OptionSpec>& train_options();
const OptionSpec* find_train_option(const std::string& name_or_alias);

// Applies a TOML file whose keys are long flag names (dashes or underscores). Unknown keys are an error.
void apply_toml_file(TrainConfig& config, const std::string& path);
// All options with their values (the resolved config written to the output dir).
io::Json config_to_json(const TrainConfig& config);
// The flag table of docs/CLI.md and the README (flag, aliases, default, changes results, help).
std::string options_markdown();
// The settings that change results, by option name.
io::Json result_settings(const TrainConfig& config);

}  // namespace dreamlora::train
