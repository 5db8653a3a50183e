// libFuzzer target for --config run.toml (apply_toml_file, then the checks made before loading
// anything): any bytes give a config or a dreamlora::Error.
#include <cstddef>
#include <cstdint>

#include "dreamlora/common/error.h"
#include "dreamlora/train/train_config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dreamlora::fuzz::scratch_dir() / "run.toml";
  dreamlora::fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    dreamlora::train::TrainConfig config;
    dreamlora::train::apply_toml_file(config, path.string());
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
