// `dreamlora make-world-data DIR`: the procedural world's captioned images (or, with --subject, the
// DreamBooth subject that never appears in it).
#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/synth/world.h"

namespace dreamlora::cli {

Runner add_make_world_data(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "make-world-data",
      "Write the procedural world's images with captions (NNNNNN.png + NNNNNN.txt), or the subject's images");
  auto dir = std::make_shared<std::string>();
  auto count = std::make_shared<int64_t>(1000);
  auto size = std::make_shared<int>(64);
  auto seed = std::make_shared<uint64_t>(0);
  auto subject = std::make_shared<bool>(false);
  cmd->add_option("dir", *dir, "output folder")->required();
  cmd->add_option("--count", *count, "number of images")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--size", *size, "image side in pixels")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--seed", *seed, "random seed")->capture_default_str();
  cmd->add_flag("--subject", *subject,
                "write the DreamBooth subject instead (a red ring around a yellow square; subject-N.png, no "
                "captions: train with --prompt \"a photo of sks toy\")");
  return [dir, count, size, seed, subject]() -> int {
    if (*subject) {
      synth::write_world_subject(*dir, *count, *seed, *size);
      std::cout << "wrote " << *count << " subject images to " << *dir << "\n";
    } else {
      synth::write_world_data(*dir, *count, *seed, *size);
      std::cout << "wrote " << *count << " captioned world images to " << *dir << "\n";
    }
    return 0;
  };
}

}  // namespace dreamlora::cli
