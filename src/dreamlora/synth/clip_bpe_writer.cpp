// write_tiny_bpe_tokenizer: learns a small byte-level BPE the way CLIP's vocabulary is laid out and
// writes it in the file format of transformers' CLIPTokenizer (for tiny test models).
#include "dreamlora/synth/clip_bpe_writer.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/text/clip_text_cleanup.h"

namespace dreamlora::synth {
namespace {

constexpr const char* kBuiltinCorpus =
    "a photo of sks dog\n"
    "a photo of a dog\n"
    "a photo of a cat sitting on a sofa\n"
    "a painting of a squirrel eating a burger, highly detailed\n"
    "a portrait of a woman with long hair, studio lighting\n"
    "a dog in a bucket\n"
    "a dog on the beach at sunset\n"
    "a red car parked in front of a house\n"
    "an astronaut riding a horse on the moon\n"
    "a bowl of fruit on a wooden table\n"
    "a landscape with mountains and a lake, golden hour\n"
    "a close up photo of a flower in the garden\n"
    "a cute puppy playing with a ball in the grass\n"
    "the city at night with lights and rain\n"
    "an oil painting of a ship on the sea\n"
    "a drawing of a bird sitting on a branch\n"
    "a photograph of the forest in autumn, trending on artstation\n"
    "best quality, masterpiece, sharp focus, high resolution\n"
    "blurry, low quality, bad anatomy, watermark\n"
    "a photo of sks dog wearing a hat\n"
    "a photo of sks dog sleeping on the floor\n"
    "a photo of the dog running in the snow\n";

using Word = std::vector<std::string>;

// Word frequencies of the corpus after CLIP's own clean-up and pre-tokenisation, as symbol lists.
std::map<Word, int64_t> corpus_words(const std::string& corpus) {
  const auto& enc = text::clip_text::byte_encoder();
  std::map<Word, int64_t> words;
  for (const std::string& piece : text::clip_text::pre_tokenize(text::clip_text::basic_clean(corpus))) {
    if (piece == "<|startoftext|>" || piece == "<|endoftext|>") continue;
    Word w;
    for (unsigned char b : piece) w.push_back(enc[b]);
    w.back() += "</w>";
    ++words[w];
  }
  return words;
}

// Most frequent adjacent pair (ties: smallest pair text); empty when no word has two symbols.
std::pair<std::string, std::string> best_pair(const std::map<Word, int64_t>& words) {
  std::map<std::pair<std::string, std::string>, int64_t> counts;
  for (const auto& [w, n] : words)
    for (size_t i = 0; i + 1 < w.size(); ++i) counts[{w[i], w[i + 1]}] += n;
  std::pair<std::string, std::string> best;
  int64_t best_count = 0;
  for (const auto& [pair, n] : counts) {
    if (n > best_count) {
      best = pair;
      best_count = n;
    }
  }
  return best;
}

std::map<Word, int64_t> apply_merge(const std::map<Word, int64_t>& words, const std::string& a,
                                    const std::string& b) {
  std::map<Word, int64_t> out;
  for (const auto& [w, n] : words) {
    Word merged;
    for (size_t i = 0; i < w.size(); ++i) {
      if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
        merged.push_back(a + b);
        ++i;
      } else {
        merged.push_back(w[i]);
      }
    }
    out[merged] += n;
  }
  return out;
}

io::Json added_token(const std::string& content, bool normalized) {
  return io::Json{{"content", content},
                  {"lstrip", false},
                  {"normalized", normalized},
                  {"rstrip", false},
                  {"single_word", false}};
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  DL_CHECK(out, "cannot write ", path.string());
  out << text;
  DL_CHECK(out.good(), "writing ", path.string(), " failed");
}

}  // namespace

int64_t write_tiny_bpe_tokenizer(const std::filesystem::path& dir, const std::string& corpus,
                                 int64_t num_merges, const std::string& pad_token) {
  DL_CHECK(num_merges >= 0, "write_tiny_bpe_tokenizer: num_merges must be >= 0, got ", num_merges);
  std::filesystem::create_directories(dir);

  // Vocabulary in openai's SimpleTokenizer order: bytes, bytes + "</w>", merges, specials.
  const auto& enc = text::clip_text::byte_encoder();
  std::vector<std::string> vocab;
  for (unsigned char b : text::clip_text::byte_vocab_order()) vocab.push_back(enc[b]);
  for (size_t i = 0; i < 256; ++i) vocab.push_back(vocab[i] + "</w>");
  std::set<std::string> known(vocab.begin(), vocab.end());

  std::vector<std::pair<std::string, std::string>> merges;
  auto words = corpus_words(corpus.empty() ? std::string(kBuiltinCorpus) : corpus);
  while (static_cast<int64_t>(merges.size()) < num_merges) {
    auto [a, b] = best_pair(words);
    if (a.empty()) break;
    merges.emplace_back(a, b);
    // Two merge paths can spell the same symbol; ids stay dense by listing it once.
    if (known.insert(a + b).second) vocab.push_back(a + b);
    words = apply_merge(words, a, b);
  }
  vocab.push_back("<|startoftext|>");
  vocab.push_back("<|endoftext|>");

  io::Json vocab_json = io::Json::object();
  for (size_t i = 0; i < vocab.size(); ++i) vocab_json[vocab[i]] = static_cast<int64_t>(i);
  DL_CHECK(vocab_json.contains(pad_token), "write_tiny_bpe_tokenizer: pad token '", pad_token,
           "' is not in the vocabulary (use \"<|endoftext|>\" or \"!\")");
  write_file(dir / "vocab.json", vocab_json.dump(2) + "\n");

  std::string merges_text = "#version: 0.2\n";
  for (const auto& [a, b] : merges) merges_text += a + " " + b + "\n";
  write_file(dir / "merges.txt", merges_text);

  const int64_t bos_id = static_cast<int64_t>(vocab.size()) - 2, eos_id = bos_id + 1;
  io::Json decoder = io::Json::object();
  bool pad_is_special = pad_token == "<|startoftext|>" || pad_token == "<|endoftext|>";
  if (!pad_is_special) {
    decoder[std::to_string(vocab_json[pad_token].get<int64_t>())] = added_token(pad_token, false);
    decoder[std::to_string(vocab_json[pad_token].get<int64_t>())]["special"] = true;
  }
  for (auto [content, id] :
       {std::pair<const char*, int64_t>{"<|startoftext|>", bos_id}, {"<|endoftext|>", eos_id}}) {
    decoder[std::to_string(id)] = added_token(content, true);
    decoder[std::to_string(id)]["special"] = true;
  }
  io::Json config = {{"added_tokens_decoder", decoder},
                     {"bos_token", "<|startoftext|>"},
                     {"clean_up_tokenization_spaces", true},
                     {"eos_token", "<|endoftext|>"},
                     {"errors", "replace"},
                     {"model_max_length", 77},
                     {"pad_token", pad_token},
                     {"tokenizer_class", "CLIPTokenizer"},
                     {"unk_token", "<|endoftext|>"}};
  write_file(dir / "tokenizer_config.json", config.dump(2) + "\n");

  io::Json special = {{"bos_token", added_token("<|startoftext|>", true)},
                      {"eos_token", added_token("<|endoftext|>", true)},
                      {"pad_token", added_token(pad_token, pad_is_special)},
                      {"unk_token", added_token("<|endoftext|>", true)}};
  write_file(dir / "special_tokens_map.json", special.dump(2) + "\n");
  return static_cast<int64_t>(vocab.size());
}

}  // namespace dreamlora::synth
