// libFuzzer target for the safetensors header parser: any byte string must give a File or a
// dreamlora::Error, never a crash or an out-of-bounds read (ASan/UBSan watch the latter).
#include <cstddef>
#include <cstdint>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto file = dreamlora::io::safetensors::File::parse(data, size, "fuzz-input");
    for (const auto& name : file.names()) (void)file.info(name);
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
