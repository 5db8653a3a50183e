// dreamlora: DreamBooth LoRA training for Stable Diffusion that survives interruption.
#include <torch/torch.h>

#include <iostream>
#include <map>

#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/common/threads.h"

int main(int argc, char** argv) {
  dreamlora::tune_allocator();
  CLI::App app{"dreamlora: DreamBooth LoRA trainer for Stable Diffusion (SD1.x, SD2.x, SDXL) that survives interruption"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dreamlora 0.1.0");
  dreamlora::ThreadSettings threads;
  app.add_option("--threads", threads.torch_threads, "CPU threads for libtorch (default: one per core)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--blas-threads", threads.blas_threads, "OpenBLAS threads (default 1: libtorch's pool does the rest)")
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
  add(dreamlora::cli::add_run_component);
  add(dreamlora::cli::add_sample);
  add(dreamlora::cli::add_train);
  add(dreamlora::cli::add_make_demo_data);
  add(dreamlora::cli::add_launch);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
