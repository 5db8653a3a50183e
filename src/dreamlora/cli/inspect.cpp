// `dreamlora inspect PATH`: what a model folder, safetensors/LoRA file, checkpoint or output folder holds.
#include "dreamlora/checkpoint/inspect.h"

#include <torch/torch.h>

#include <iomanip>
#include <iostream>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/convert/single_file.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"

namespace dreamlora::cli {

namespace fs = std::filesystem;

namespace {

int inspect_model_dir(const fs::path& path) {
  auto dir = io::ModelDir::open(path);
  std::cout << "pipeline " << dir.pipeline_class() << (dir.is_sdxl() ? " (SDXL)" : "") << " at "
            << path.string() << "\n";
  for (const auto& c : dir.components()) {
    std::cout << "  " << std::left << std::setw(16) << c.name << std::setw(32) << c.class_name;
    if (c.name.rfind("tokenizer", 0) == 0 || c.name == "scheduler") {
      std::cout << "(no weights)\n";
      continue;
    }
    int64_t params = 0;
    uint64_t bytes = 0;
    std::map<std::string, int64_t> dtypes;
    for (const auto& file : io::find_weight_files(dir.component_dir(c.name))) {
      auto st = io::safetensors::File::open(file);
      bytes += st.data_bytes();
      for (const auto& name : st.names()) {
        int64_t n = c10::multiply_integers(st.info(name).shape);
        params += n;
        dtypes[st.info(name).dtype] += n;
      }
    }
    std::cout << std::right << std::setw(12) << params << " params  " << checkpoint::human_bytes(bytes);
    for (const auto& [dt, n] : dtypes) std::cout << "  " << dt;
    std::cout << "\n";
  }
  return 0;
}

int inspect_safetensors(const fs::path& path) {
  auto file = io::safetensors::File::open(path);
  auto lora = lora::describe_lora_file(path);
  if (lora.format != lora::LoRAFormat::unknown) {
    std::cout << lora.to_string();
    return 0;
  }
  if (auto single = convert::describe_single_file(file); !single.empty()) {
    std::cout << single;
    return 0;
  }
  std::cout << path.string() << ": safetensors, " << file.names().size() << " tensors, "
            << checkpoint::human_bytes(file.data_bytes()) << "\n";
  for (const auto& [k, v] : file.metadata()) std::cout << "  metadata " << k << " = " << v << "\n";
  for (const auto& name : file.names()) {
    const auto& info = file.info(name);
    std::cout << "  " << name << "  " << info.dtype << " [";
    for (size_t i = 0; i < info.shape.size(); ++i) std::cout << (i ? ", " : "") << info.shape[i];
    std::cout << "]\n";
  }
  return 0;
}

}  // namespace

Runner add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "inspect", "Describe a model folder, safetensors/LoRA file, checkpoint or output folder");
  auto path = std::make_shared<std::string>();
  cmd->add_option("path", *path, "model dir, .safetensors file, checkpoint dir or training output dir")
      ->required();
  return [path]() -> int {
    fs::path p(*path);
    DL_CHECK(fs::exists(p), p.string(), ": no such file or directory");
    if (fs::is_directory(p)) {
      if (fs::exists(p / "model_index.json")) return inspect_model_dir(p);
      auto report = checkpoint::inspect_checkpoints(p);
      for (const auto& line : report.lines) std::cout << line << "\n";
      return report.exit_status;
    }
    io::refuse_pickle(p);
    return inspect_safetensors(p);
  };
}

}  // namespace dreamlora::cli
