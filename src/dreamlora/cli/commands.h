// The CLI's subcommands: each file registers one on the app and runs it. The library knows nothing of
// the CLI; these files only parse flags and call it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace dreamlora::cli {

// A subcommand's body; returns the process exit status.
using Runner = std::function<int()>;

Runner add_inspect(CLI::App& app);
Runner add_make_tiny_model(CLI::App& app);
Runner add_make_model(CLI::App& app);
Runner add_run_component(CLI::App& app);
Runner add_sample(CLI::App& app);
Runner add_train(CLI::App& app);
Runner add_make_demo_data(CLI::App& app);
Runner add_make_world_data(CLI::App& app);
Runner add_evaluate(CLI::App& app);
Runner add_launch(CLI::App& app);
Runner add_pretrain(CLI::App& app);

}  // namespace dreamlora::cli
