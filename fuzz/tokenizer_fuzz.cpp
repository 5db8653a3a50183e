// libFuzzer target for the CLIP tokenizer files: the input is vocab.json, "\n----\n", merges.txt (the
// first line of merges.txt is the header CLIP's files carry). Loading, then encoding a prompt and a
// piece of the input, gives ids inside the vocabulary, or a dreamlora::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "dreamlora/common/error.h"
#include "dreamlora/text/clip_tokenizer.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto dir = dreamlora::fuzz::scratch_dir() / "tokenizer";
  std::filesystem::create_directories(dir);
  auto [vocab, merges] = dreamlora::fuzz::split_two(data, size);
  dreamlora::fuzz::write_bytes(dir / "vocab.json", vocab);
  dreamlora::fuzz::write_bytes(dir / "merges.txt", merges);
  try {
    auto tok = dreamlora::text::CLIPTokenizer::load(dir);
    for (const std::string& text : {std::string("a photo of sks dog"), std::string(merges.substr(0, 64))}) {
      auto enc = tok.encode(text, true);
      if (enc.input_ids.size() != enc.attention_mask.size()) std::abort();
    }
  } catch (const dreamlora::Error&) {
  }
  return 0;
}
