// `dreamlora run-component`: runs one pipeline component on named input tensors and writes named outputs,
// so anyone can compare dreamlora with another implementation tensor by tensor.
#include <torch/torch.h>

#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/pipeline/component_runner.h"

namespace dreamlora::cli {

Runner add_run_component(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "run-component", "Run one component (text_encoder, unet, vae_encoder, ...) on tensors from a file");
  auto args = std::make_shared<pipeline::ComponentRunArgs>();
  cmd->add_option("--model", args->model, "diffusers pipeline folder or single-file .safetensors checkpoint")
      ->required();
  cmd->add_option("--model-config", args->model_config,
                  "for a single-file --model: diffusers folder with its configs and tokenizers");
  cmd->add_option(
         "--component", args->component,
         "tokenizer | tokenizer_2 | text_encoder | text_encoder_2 | unet | vae_encoder | vae_decoder")
      ->required();
  cmd->add_option("--inputs", args->inputs, "safetensors file of named inputs");
  cmd->add_option("--prompts", args->prompts, "JSON list of strings (tokenizers)");
  cmd->add_option("--out", args->out, "safetensors file for the outputs")->required();
  cmd->add_option("--lora", args->lora, "apply this LoRA file first");
  cmd->add_option("--lora-scale", args->lora_scale, "LoRA strength");
  cmd->add_option("--variant", args->variant, "weight file variant");
  return [args]() -> int {
    auto outputs = pipeline::run_component(*args);
    io::safetensors::save(args->out, outputs);
    for (const auto& [name, t] : outputs) std::cout << name << " " << t.sizes() << "\n";
    return 0;
  };
}

}  // namespace dreamlora::cli
