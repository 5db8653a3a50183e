// libFuzzer target for a checkpoint's trainer_state.json as resume reads it (read_json, then
// TrainerState::from_json): any bytes give a state or a dreamlora::Error.
#include <cstddef>
#include <cstdint>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/train/trainer_state.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dreamlora::fuzz::scratch_dir() / "trainer_state.json";
  dreamlora::fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    auto state = dreamlora::train::TrainerState::from_json(dreamlora::io::read_json(path), "fuzz");
    (void)state.to_json();
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
