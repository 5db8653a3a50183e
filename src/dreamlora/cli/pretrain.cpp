// `dreamlora pretrain --stage vae|unet`: trains a small pipeline's VAE, then its whole UNet, from scratch on
// captioned images, with the checkpoint / resume / graceful-stop guarantees of `train`.
#include "dreamlora/train/pretrain.h"

#include <memory>
#include <string>

#include "dreamlora/cli/commands.h"

namespace dreamlora::cli {

Runner add_pretrain(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "pretrain", "Train a small pipeline's VAE or whole UNet from scratch on captioned images (resumable)");
  auto o = std::make_shared<train::PretrainOptions>();
  auto model = std::make_shared<std::string>(), data = std::make_shared<std::string>(),
       out = std::make_shared<std::string>();
  cmd->add_option("--stage", o->stage, "vae or unet")->required();
  cmd->add_option("--model", *model, "pipeline folder to start from (diffusers layout)")->required();
  cmd->add_option("--data", *data, "folder of images with a caption in <name>.txt beside each")->required();
  cmd->add_option("--output-dir", *out, "checkpoints, then the trained pipeline in pipeline/")->required();
  cmd->add_option("--num-steps", o->num_steps, "optimizer steps")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "images per step")->capture_default_str();
  cmd->add_option("--learning-rate,--lr", o->learning_rate, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--warmup-steps", o->warmup_steps, "linear warm-up, then cosine decay to 0")
      ->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--max-grad-norm", o->max_grad_norm, "gradient clipping (0: off)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the data order and noise")->capture_default_str();
  cmd->add_option("--kl-weight", o->kl_weight, "vae: weight of the KL term per latent element")
      ->capture_default_str();
  cmd->add_option("--caption-dropout", o->caption_dropout,
                  "unet: share of samples trained with the empty prompt (classifier-free guidance)")
      ->capture_default_str();
  cmd->add_option("--snr-gamma", o->snr_gamma,
                  "unet: Min-SNR-gamma loss weighting (0: plain MSE; 5 is the paper's value)")
      ->capture_default_str();
  cmd->add_flag("--train-text-encoder", o->train_text_encoder,
                "unet: train the text encoder with the UNet (a random one otherwise stays frozen)");
  cmd->add_option("--checkpointing-steps", o->checkpointing_steps,
                  "checkpoint every N steps (0: only on stop)")
      ->capture_default_str();
  cmd->add_option("--checkpoints-total-limit", o->checkpoints_total_limit, "checkpoints kept (0: all)")
      ->capture_default_str();
  cmd->add_option("--resume-from-checkpoint", o->resume_from_checkpoint,
                  "latest, none or a checkpoint folder")
      ->capture_default_str();
  cmd->add_option("--save-dtype", o->save_dtype, "fp32 or fp16: the written pipeline's weights")
      ->capture_default_str();
  cmd->add_option("--log-every", o->log_every, "print the mean loss every N steps")->capture_default_str();
  cmd->add_option("--max-images", o->max_images, "use only the first N images (0: all)")
      ->capture_default_str();
  cmd->add_flag("--allow-schedule-change", o->allow_schedule_change,
                "resume with another --num-steps (a checkpoint at or past it only writes the pipeline)");
  return [o, model, data, out]() -> int {
    o->model = *model;
    o->data = *data;
    o->output_dir = *out;
    return train::run_pretrain(*o);
  };
}

}  // namespace dreamlora::cli
