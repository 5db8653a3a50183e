// `dreamlora train`: flags generated from the option table (AutoTrain names, diffusers aliases),
// optional TOML file (--config), flags override the file.
#include <iostream>
#include <map>
#include <memory>

#include "dreamlora/cli/commands.h"
#include "dreamlora/train/train_config.h"
#include "dreamlora/train/trainer.h"

namespace dreamlora::cli {

Runner add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train",
                                 "DreamBooth LoRA training with checkpoints, resume and graceful preemption");
  auto values = std::make_shared<std::map<std::string, std::string>>();
  auto options = std::make_shared<std::map<std::string, CLI::Option*>>();
  auto config_file = std::make_shared<std::string>();
  cmd->add_option("--config", *config_file,
                  "TOML file whose keys are the long flag names; flags override it");
  auto markdown = std::make_shared<bool>(false);
  cmd->add_flag("--flags-markdown", *markdown, "print the flag table (docs/CLI.md) and exit");
  for (const auto& spec : train::train_options()) {
    std::string names = "--" + spec.name;
    for (const auto& a : spec.aliases) names += ",--" + a;
    auto& slot = (*values)[spec.name];
    CLI::Option* opt =
        spec.is_switch ? cmd->add_flag(names, spec.help) : cmd->add_option(names, slot, spec.help);
    (*options)[spec.name] = opt;
  }
  return [values, options, config_file, markdown]() -> int {
    if (*markdown) {
      std::cout << train::options_markdown();
      return 0;
    }
    train::TrainConfig config;
    if (!config_file->empty()) train::apply_toml_file(config, *config_file);
    for (const auto& spec : train::train_options()) {
      CLI::Option* opt = options->at(spec.name);
      if (opt->count() == 0) continue;
      spec.set(config, spec.is_switch ? "true" : values->at(spec.name));
    }
    return train::run_training(config);
  };
}

}  // namespace dreamlora::cli
