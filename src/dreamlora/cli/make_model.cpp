// `dreamlora make-model --preset sd15|sd21|sd21-v|sdxl OUT`: a full-size pipeline with random weights.
#include <chrono>
#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/synth/model_presets.h"

namespace dreamlora::cli {

namespace {
torch::Dtype parse_dtype(const std::string& name) {
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "fp32") return torch::kFloat32;
  fail(str("--dtype: expected fp16, bf16 or fp32, got '", name, "'"));
}
}  // namespace

Runner add_make_model(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "make-model",
      "Write a full-size pipeline (published SD 1.5 / 2.1 / SDXL base architecture) with RANDOM weights, for "
      "benchmarks and tests only: it generates noise, not images");
  auto opts = std::make_shared<synth::ModelPresetOptions>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("fp16");
  opts->tokenizer = "../shared/fixtures/tiny-sd/tokenizer";
  cmd->add_option("out", *out, "output folder")->required();
  cmd->add_option(
         "--preset", opts->preset,
         "sd15 (runwayml/stable-diffusion-v1-5), sd21 (stabilityai/stable-diffusion-2-1-base), sd21-v "
         "(stabilityai/stable-diffusion-2-1, v-prediction), sdxl (stabilityai/stable-diffusion-xl-base-1.0)")
      ->required();
  cmd->add_option("--dtype", *dtype, "weights dtype: fp16 (default), bf16, fp32");
  cmd->add_flag(
      "--single-file", opts->single_file,
      "write OUT/model.safetensors in the original (LDM/SGM) layout and OUT/config/ for --model-config");
  cmd->add_option("--tokenizer", opts->tokenizer,
                  "CLIP BPE tokenizer folder to copy (the real 49408-token vocabulary)")
      ->capture_default_str();
  cmd->add_option("--seed", opts->seed, "initialisation seed");
  return [opts, out, dtype]() -> int {
    opts->dtype = parse_dtype(*dtype);
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t bytes = synth::write_model_preset(*out, *opts);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "wrote " << opts->preset << " (random weights, " << *dtype << ", " << bytes / (1024 * 1024)
              << " MiB) to " << *out << (opts->single_file ? " as one file + config/" : "") << " in " << s
              << " s\n";
    return 0;
  };
}

}  // namespace dreamlora::cli
