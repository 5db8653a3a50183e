// Pretraining of a small pipeline from scratch on a folder of captioned images (`dreamlora pretrain`), in
// two stages: the VAE (reconstruction + a small KL term, then scaling_factor = 1 / std of the latents), then
// every UNet parameter (epsilon objective of the pipeline's noise schedule, frozen VAE, latents computed
// once; the text encoder frozen with its caption embeddings computed once, or trained with the UNet). Same
// guarantees as `train`: checkpoints committed with the CheckpointStore, the output lock, SIGTERM / SIGINT ->
// checkpoint -> exit status 75, and a bit-exact resume (weights, AdamW moments, step; the noise and data
// order are functions of (seed, step)).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace dreamlora::train {

struct PretrainOptions {
  std::string stage;                 // "vae" or "unet"
  std::filesystem::path model;       // the pipeline to start from (diffusers layout)
  std::filesystem::path data;        // *.png (jpg, ...) with a caption in <name>.txt beside each
  std::filesystem::path output_dir;  // checkpoint-<N>/ and, at the end, pipeline/
  int64_t num_steps = 1000;
  int64_t batch_size = 32;
  double learning_rate = 1e-3;
  int64_t warmup_steps = 100;  // then cosine decay to 0 at num_steps
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0: no clipping
  uint64_t seed = 0;
  double kl_weight = 1e-4;       // vae: weight of the KL per latent element
  double caption_dropout = 0.1;  // unet: share of samples trained with the empty prompt
  // unet: train the text encoder with the UNet. A random frozen encoder keeps each word's difference to
  // its own position, which cross-attention learns to find only slowly; trained, it spreads the prompt over
  // every position (as a real CLIP does) and the UNet follows prompts after far fewer steps.
  bool train_text_encoder = false;
  double snr_gamma = 0;                           // unet: Min-SNR-gamma loss weighting (0: plain MSE)
  int64_t checkpointing_steps = 500;              // 0: only when stopped
  int64_t checkpoints_total_limit = 2;            // 0: keep all
  std::string resume_from_checkpoint = "latest";  // latest | none | a checkpoint folder
  std::string save_dtype = "fp32";                // fp32 | fp16: every weight file of the written pipeline
  int64_t log_every = 50;
  int64_t max_images = 0;  // 0: every image of data
  // Resume with another num_steps (the cosine schedule depends on it); a checkpoint at or past the new
  // num_steps then only writes the pipeline.
  bool allow_schedule_change = false;
};

// Runs the stage; 0 when num_steps were done and <output_dir>/pipeline was written, 75 when stopped early
// after committing a checkpoint (stop::kExitStoppedEarly). Bad options or data throw dreamlora::Error.
int run_pretrain(const PretrainOptions& options);

}  // namespace dreamlora::train
