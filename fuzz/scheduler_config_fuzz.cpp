// libFuzzer target for scheduler/scheduler_config.json (SchedulerConfig::from_json for each scheduler
// class the sampler offers): any bytes give a config or a dreamlora::Error.
#include <cstddef>
#include <cstdint>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/schedulers/scheduler_config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace s = dreamlora::schedulers;
  const auto path = dreamlora::fuzz::scratch_dir() / "scheduler_config.json";
  dreamlora::fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  for (const char* cls : {s::kDDPM, s::kDDIM, s::kEuler, s::kEulerAncestral, s::kDPMSolverMultistep}) {
    try {
      auto config = s::SchedulerConfig::from_file(path, cls);
      (void)config.to_json();
    } catch (const dreamlora::Error&) {
    }
  }
  return 0;
}
