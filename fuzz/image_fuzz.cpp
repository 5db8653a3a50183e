// libFuzzer target for the image decoders as the trainer calls them (PNG, JPEG with EXIF orientation,
// WebP, BMP; format by first bytes): any byte string gives an Image whose buffer matches its size, or
// a dreamlora::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto img =
        dreamlora::io::decode_image(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.img");
    if (img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3) std::abort();
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
