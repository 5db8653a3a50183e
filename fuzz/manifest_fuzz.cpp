// libFuzzer target for MANIFEST.json (Manifest::parse, what verify_checkpoint reads first): any text
// gives a Manifest whose file names are plain names, or a dreamlora::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto m = dreamlora::checkpoint::Manifest::parse(
        std::string_view(reinterpret_cast<const char*>(data), size), "MANIFEST.json");
    for (const auto& f : m.files)
      if (f.name.empty() || f.name.find('/') != std::string::npos || f.name == "..") std::abort();
    (void)m.to_json();
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
