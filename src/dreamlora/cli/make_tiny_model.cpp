// `dreamlora make-tiny-model DIR [--sdxl]`: a small random pipeline in diffusers layout (the embedded
// default).
#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/synth/tiny_model.h"

namespace dreamlora::cli {

Runner add_make_tiny_model(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "make-tiny-model",
      "Write a small randomly initialised SD1.x-style (or SDXL-style) pipeline in diffusers layout");
  auto opts = std::make_shared<synth::TinyModelOptions>();
  auto dir = std::make_shared<std::string>();
  cmd->add_option("dir", *dir, "output folder")->required();
  cmd->add_flag("--sdxl", opts->sdxl, "SDXL-style pipeline (two text encoders, text_time conditioning)");
  cmd->add_flag("--world", opts->world,
                "the shapes-world preset: 64x64 images, VAE scale factor 4, world words as single tokens");
  cmd->add_option("--seed", opts->seed, "initialisation seed");
  return [opts, dir]() -> int {
    synth::write_tiny_model(*dir, *opts);
    std::cout << "wrote tiny " << (opts->sdxl ? "SDXL" : "SD") << " pipeline to " << *dir << "\n";
    return 0;
  };
}

}  // namespace dreamlora::cli
