// libFuzzer target for a model folder's config.json files, read as the loaders read them: the same bytes
// as unet/config.json (UNet2DConditionConfig), vae/config.json (AutoencoderKLConfig) and
// text_encoder/config.json (CLIPTextConfig). Any bytes give a config or a dreamlora::Error, and a config
// that was accepted reads back from its own to_json() (tiny models and exports write them that way).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "dreamlora/common/error.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"
#include "fuzz_util.h"

namespace {

template <typename Config>
void parse_and_round_trip(const std::filesystem::path& path) {
  Config config;
  try {
    config = Config::from_file(path);
  } catch (const dreamlora::Error&) {
    return;
  }
  try {
    (void)Config::from_json(config.to_json(), "round trip");
  } catch (const dreamlora::Error&) {
    std::abort();  // an accepted config must read back from what it writes
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dreamlora::fuzz::scratch_dir() / "config.json";
  dreamlora::fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  parse_and_round_trip<dreamlora::unet::UNet2DConditionConfig>(path);
  parse_and_round_trip<dreamlora::vae::AutoencoderKLConfig>(path);
  parse_and_round_trip<dreamlora::text::CLIPTextConfig>(path);
  return 0;
}
