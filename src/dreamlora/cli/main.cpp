// dreamlora: DreamBooth LoRA training for Stable Diffusion that survives interruption.
#include <torch/torch.h>

#include <iostream>
#include <map>

#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/common/threads.h"
#include "dreamlora/version.h"

namespace {

constexpr int kExitUsage = 2;  // as argparse and most Unix tools: the command line itself is wrong

// Points at the --help of the subcommand being parsed (or of the program).
std::string usage_hint(CLI::App& app) {
  std::string command = "dreamlora";
  for (CLI::App* sub = &app; !sub->get_subcommands().empty();) {
    sub = sub->get_subcommands().front();
    command += " " + sub->get_name();
  }
  return "`" + command + " --help` lists the flags";
}

}  // namespace

int main(int argc, char** argv) {
  dreamlora::tune_allocator();
  CLI::App app{
      "dreamlora: DreamBooth LoRA trainer for Stable Diffusion (SD1.x, SD2.x, SDXL) that survives "
      "interruption"};
  app.require_subcommand(1);
  // As users type it: global flags may come after the subcommand too (`train ... --threads 2`), and a flag
  // given twice takes its last value, as argparse does (scripts append overrides to a base command line).
  app.fallthrough();
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", "dreamlora " DREAMLORA_VERSION);
  dreamlora::ThreadSettings threads;
  app.add_option("--threads", threads.torch_threads, "CPU threads for libtorch (default: one per core)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--blas-threads", threads.blas_threads,
                 "OpenBLAS threads (default 1: libtorch's pool does the rest)")
      ->check(CLI::PositiveNumber);

  std::map<CLI::App*, dreamlora::cli::Runner> runners;
  auto add = [&](auto adder) {
    auto all = [](CLI::App*) { return true; };
    size_t before = app.get_subcommands(all).size();
    auto runner = adder(app);
    auto subs = app.get_subcommands(all);
    if (subs.size() > before) runners[subs.back()] = runner;
  };
  add(dreamlora::cli::add_inspect);
  add(dreamlora::cli::add_make_tiny_model);
  add(dreamlora::cli::add_make_model);
  add(dreamlora::cli::add_run_component);
  add(dreamlora::cli::add_sample);
  add(dreamlora::cli::add_train);
  add(dreamlora::cli::add_make_demo_data);
  add(dreamlora::cli::add_make_world_data);
  add(dreamlora::cli::add_evaluate);
  add(dreamlora::cli::add_launch);
  add(dreamlora::cli::add_pretrain);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "error: " << e.what() << "\nhint: " << usage_hint(app) << "\n";
    return kExitUsage;
  }
  try {
    dreamlora::configure_threads(threads);
    for (auto& [sub, runner] : runners)
      if (sub->parsed()) return runner();
  } catch (const dreamlora::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 1;
}
