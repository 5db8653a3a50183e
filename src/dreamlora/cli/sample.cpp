// `dreamlora sample`: text-to-image with an optional LoRA (diffusers, peft or kohya file) at a scale.
#include <torch/torch.h>
#include <unistd.h>

#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/io/image.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/lora/inject.h"
#include "dreamlora/pipeline/component_runner.h"
#include "dreamlora/pipeline/text_to_image.h"

namespace dreamlora::cli {

namespace fs = std::filesystem;

namespace {
struct SampleArgs {
  pipeline::SampleOptions options;
  std::string model, model_config, tokenizer, prediction_type, out = "samples", lora, variant, device = "cpu";
  double lora_scale = 1.0;
};
}  // namespace

Runner add_sample(CLI::App& app) {
  auto* cmd = app.add_subcommand("sample", "Generate images from a prompt (optionally with a LoRA)");
  auto a = std::make_shared<SampleArgs>();
  cmd->add_option("--model", a->model, "diffusers pipeline folder or single-file .safetensors checkpoint")
      ->required();
  cmd->add_option("--model-config", a->model_config,
                  "for a single-file --model: diffusers folder with its configs and tokenizers (default: "
                  "the standard configs of the detected family, with --tokenizer)");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "for a single-file --model without --model-config: folder with the CLIP BPE files "
                  "(vocab.json, merges.txt), e.g. a Stable Diffusion download's tokenizer/");
  cmd->add_option("--prediction-type", a->prediction_type,
                  "epsilon | v_prediction: replaces the scheduler config's (and picks SD 2-1 or 2-1-base "
                  "for a single SD2.x file)")
      ->check(CLI::IsMember({"epsilon", "v_prediction"}));
  cmd->add_option("--variant", a->variant, "weight file variant, e.g. fp16");
  cmd->add_option("--prompt", a->options.prompt, "prompt")->required();
  cmd->add_option("--negative-prompt", a->options.negative_prompt, "negative prompt");
  cmd->add_option("--steps", a->options.steps, "sampler steps")->capture_default_str();
  cmd->add_option("--guidance-scale,--guidance", a->options.guidance, "classifier-free guidance scale")
      ->capture_default_str();
  cmd->add_option("--sampler", a->options.sampler, "euler | euler-a | ddim | dpmpp-2m (+ -karras variants)")
      ->capture_default_str();
  cmd->add_option("--seed", a->options.seed, "random seed")->capture_default_str();
  cmd->add_option("--width", a->options.width, "image width (default: the model's)");
  cmd->add_option("--height", a->options.height, "image height (default: the model's)");
  cmd->add_option("--num-images", a->options.num_images, "images to generate")->capture_default_str();
  cmd->add_option("--lora", a->lora, "LoRA file (diffusers, peft or kohya safetensors)");
  cmd->add_option("--lora-scale", a->lora_scale, "LoRA strength")->capture_default_str();
  cmd->add_option("--out", a->out, "output folder")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu or cuda[:N]")->capture_default_str();
  return [a]() -> int {
    pipeline::LoadOptions load;
    load.variant = a->variant;
    load.model_config = a->model_config;
    load.tokenizer = a->tokenizer;
    load.prediction_type = a->prediction_type;
    load.device = torch::Device(a->device);
    auto model = pipeline::ModelBundle::load(a->model, load);
    pipeline::check_sample_options(model, a->options);
    std::string lora_desc;
    if (!a->lora.empty()) {
      pipeline::apply_lora_file(model, a->lora, a->lora_scale);
      lora_desc = fs::path(a->lora).filename().string() + ":" + std::to_string(a->lora_scale);
    }
    const bool tty = isatty(STDERR_FILENO) != 0;
    auto images = pipeline::text_to_image(model, a->options, [&](int64_t step, int64_t total) {
      if (tty) std::cerr << "\rsampling step " << step << "/" << total << std::flush;
    });
    if (tty) std::cerr << "\n";
    fs::create_directories(a->out);
    for (size_t i = 0; i < images.size(); ++i) {
      auto path =
          fs::path(a->out) / ("sample-" + std::to_string(a->options.seed) + "-" + std::to_string(i) + ".png");
      io::save_png(path, images[i],
                   pipeline::sample_metadata(a->options, static_cast<int64_t>(i), lora_desc));
      std::cout << path.string() << "\n";
    }
    return 0;
  };
}

}  // namespace dreamlora::cli
