// `dreamlora make-demo-data DIR`: the embedded default's synthetic subject images.
#include <iostream>

#include "dreamlora/cli/commands.h"
#include "dreamlora/synth/demo_data.h"

namespace dreamlora::cli {

Runner add_make_demo_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("make-demo-data",
                                 "Write synthetic subject images (a red ring around a yellow square)");
  auto dir = std::make_shared<std::string>();
  auto count = std::make_shared<int64_t>(6);
  auto size = std::make_shared<int64_t>(64);
  auto seed = std::make_shared<uint64_t>(0);
  cmd->add_option("dir", *dir, "output folder")->required();
  cmd->add_option("--count", *count, "number of images")->capture_default_str();
  cmd->add_option("--size", *size, "image size in pixels")->capture_default_str();
  cmd->add_option("--seed", *seed, "random seed")->capture_default_str();
  return [dir, count, size, seed]() -> int {
    synth::write_demo_subject_images(*dir, *count, *size, *seed);
    std::cout << "wrote " << *count << " subject images to " << *dir << "\n";
    return 0;
  };
}

}  // namespace dreamlora::cli
