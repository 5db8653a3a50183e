// CLIPTokenizer: loading the files of a tokenizer dir, added-token splitting, byte-level BPE, ids.
#include "dreamlora/text/clip_tokenizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/text/clip_text_cleanup.h"

namespace dreamlora::text {
namespace {

constexpr const char* kStartOfText = "<|startoftext|>";
constexpr const char* kEndOfText = "<|endoftext|>";
// transformers reads at most 49152 - 256 - 2 merges (CLIP's vocabulary budget).
constexpr size_t kMaxMerges = 49152 - 256 - 2;
constexpr size_t kMaxCacheEntries = 200000;

struct Piece {
  std::string token;
  int64_t id;
};

// A special token value of tokenizer_config.json / special_tokens_map.json: a string or an
// AddedToken dict ({"content": ..., ...}).
std::string token_content(const io::Json& value, const std::string& key, const std::string& source) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  fail(str(source, ": key '", key, "' must be a string or an object with \"content\", got ", value.dump()));
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  DL_CHECK(in, "cannot open ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// vocab.json streamed into the map ({"token": id, ...}): no JSON tree of 49k nodes is built
// (measured: half of the tokenizer's load time).
class VocabReader : public nlohmann::json_sax<io::Json> {
 public:
  VocabReader(std::unordered_map<std::string, int64_t>& vocab, std::string source)
      : vocab_(vocab), source_(std::move(source)) {}
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool number_integer(number_integer_t v) override { return add(v); }
  bool number_unsigned(number_unsigned_t v) override { return add(static_cast<int64_t>(v)); }
  bool start_object(std::size_t) override { return ++depth_ == 1 || not_a_flat_object(); }
  bool end_object() override { return --depth_ >= 0; }
  bool null() override { return not_an_integer(); }
  bool boolean(bool) override { return not_an_integer(); }
  bool number_float(number_float_t, const string_t&) override { return not_an_integer(); }
  bool string(string_t&) override { return not_an_integer(); }
  bool binary(binary_t&) override { return not_an_integer(); }
  bool start_array(std::size_t) override { return depth_ == 0 ? not_a_flat_object() : not_an_integer(); }
  bool end_array() override { return false; }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) override {
    fail(str(source_, ": invalid JSON at byte ", position, ": ", e.what()));
  }

 private:
  bool add(int64_t id) {
    if (depth_ != 1) return not_a_flat_object();
    vocab_.insert_or_assign(std::move(key_), id);  // a repeated key: the last one wins, as in Python
    return true;
  }
  bool not_an_integer() {
    if (depth_ != 1) return not_a_flat_object();
    fail(str(source_, ": id of '", key_, "' is not an integer"));
  }
  [[noreturn]] bool not_a_flat_object() { fail(str(source_, ": expected an object of token -> id")); }

  std::unordered_map<std::string, int64_t>& vocab_;
  std::string source_;
  std::string key_;
  int depth_ = 0;
};

// The whitespace-separated fields of one line.
std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    const size_t start = i;
    while (i < line.size() && !std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

}  // namespace

struct CLIPTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;
  // Symbols interned to ints; merges keyed by (left << 32 | right) -> (rank, merged symbol).
  std::unordered_map<std::string, int32_t> symbol_ids;
  std::vector<std::string> symbols;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::vector<Piece> added;  // longest content first, for the split
  std::unordered_map<std::string, int64_t> added_ids;
  std::string bos, eos, pad, unk;
  int64_t bos_id = 0, eos_id = 0, pad_id = 0, unk_id = 0, model_max_length = 77;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<Piece>> cache;

  int32_t intern(const std::string& s) {
    auto [it, inserted] = symbol_ids.emplace(s, static_cast<int32_t>(symbols.size()));
    if (inserted) symbols.push_back(s);
    return it->second;
  }
  int64_t id_of(const std::string& token) const {
    if (auto it = added_ids.find(token); it != added_ids.end()) return it->second;
    if (auto it = vocab.find(token); it != vocab.end()) return it->second;
    return unk_id;
  }

  std::vector<Piece> bpe(const std::string& word) const;
  void bpe_cached(const std::string& word, std::vector<Piece>& out) const;
  void tokenize_chunk(std::string_view chunk, std::vector<Piece>& out) const;
  std::vector<Piece> tokenize(const std::string& text) const;
};

// CLIPTokenizer.bpe: repeatedly merge every occurrence of the lowest-ranked adjacent pair.
std::vector<Piece> CLIPTokenizer::Impl::bpe(const std::string& word) const {
  if (word == kStartOfText || word == kEndOfText) return {{word, id_of(word)}};
  const auto& enc = clip_text::byte_encoder();
  std::vector<int32_t> syms;
  syms.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    std::string s = enc[static_cast<unsigned char>(word[i])];
    if (i + 1 == word.size()) s += "</w>";
    syms.push_back(symbol_ids.at(s));  // all 512 base symbols are interned at load
  }
  while (syms.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max(), left = -1, right = -1, merged = -1;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto it = merges.find((uint64_t(uint32_t(syms[i])) << 32) | uint32_t(syms[i + 1]));
      if (it != merges.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        left = syms[i];
        right = syms[i + 1];
        merged = it->second.second;
      }
    }
    if (merged < 0) break;
    std::vector<int32_t> next;
    next.reserve(syms.size());
    for (size_t i = 0; i < syms.size(); ++i) {
      if (i + 1 < syms.size() && syms[i] == left && syms[i + 1] == right) {
        next.push_back(merged);
        ++i;
      } else {
        next.push_back(syms[i]);
      }
    }
    syms.swap(next);
  }
  std::vector<Piece> pieces;
  pieces.reserve(syms.size());
  for (int32_t s : syms) pieces.push_back({symbols[s], id_of(symbols[s])});
  return pieces;
}

void CLIPTokenizer::Impl::bpe_cached(const std::string& word, std::vector<Piece>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (auto it = cache.find(word); it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<Piece> pieces = bpe(word);
  out.insert(out.end(), pieces.begin(), pieces.end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(word, std::move(pieces));
}

// CLIPTokenizer._tokenize on one chunk between added tokens.
void CLIPTokenizer::Impl::tokenize_chunk(std::string_view chunk, std::vector<Piece>& out) const {
  for (const std::string& word : clip_text::pre_tokenize(clip_text::basic_clean(chunk)))
    bpe_cached(word, out);
}

// PreTrainedTokenizer.tokenize: added tokens (the special ones included) are cut out of the raw text
// before any clean-up, so "!" becomes id 0 when it is the pad token.
std::vector<Piece> CLIPTokenizer::Impl::tokenize(const std::string& text) const {
  std::vector<Piece> out;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const Piece* hit = nullptr;
    for (const Piece& a : added) {
      if (text.compare(i, a.token.size(), a.token) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) tokenize_chunk(std::string_view(text).substr(start, i - start), out);
    out.push_back(*hit);
    i += hit->token.size();
    start = i;
  }
  if (start < text.size()) tokenize_chunk(std::string_view(text).substr(start), out);
  return out;
}

CLIPTokenizer CLIPTokenizer::load(const std::filesystem::path& dir, const std::string& pad_token) {
  auto impl = std::make_shared<Impl>();
  DL_CHECK(std::filesystem::is_directory(dir), "tokenizer directory ", dir.string(), " does not exist");

  // vocab.json
  auto vocab_path = dir / "vocab.json";
  {
    const std::string text = read_text_file(vocab_path);
    impl->vocab.reserve(65536);
    VocabReader reader(impl->vocab, vocab_path.string());
    io::Json::sax_parse(text, &reader);
  }

  // merges.txt: Python reads text.strip().split("\n")[1 : 48895] (first line skipped unconditionally).
  const auto& enc = clip_text::byte_encoder();
  for (int b = 0; b < 256; ++b) {
    impl->intern(enc[b]);
    impl->intern(enc[b] + "</w>");
  }
  auto merges_path = dir / "merges.txt";
  const std::string merges_text = read_text_file(merges_path);
  impl->symbol_ids.reserve(2 * kMaxMerges);
  impl->symbols.reserve(2 * kMaxMerges);
  impl->merges.reserve(kMaxMerges);
  std::string_view rest(merges_text);
  auto next_line = [&rest]() -> std::optional<std::string_view> {
    if (rest.empty()) return std::nullopt;
    const size_t eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    return line;
  };
  next_line();
  std::string merged;
  for (size_t rank = 0; rank < kMaxMerges; ++rank) {
    auto line = next_line();
    if (!line) break;
    const auto fields = split_fields(*line);
    if (fields.size() != 2) continue;  // such a line never matches a pair in Python either
    merged.assign(fields[0]).append(fields[1]);
    int32_t ia = impl->intern(std::string(fields[0])), ib = impl->intern(std::string(fields[1]));
    int32_t im = impl->intern(merged);
    impl->merges[(uint64_t(uint32_t(ia)) << 32) | uint32_t(ib)] = {static_cast<int32_t>(rank), im};
  }

  // Special and added tokens: tokenizer_config.json, overridden by special_tokens_map.json.
  io::Json config = io::Json::object();
  auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) config = io::read_json(config_path);
  auto map_path = dir / "special_tokens_map.json";
  if (std::filesystem::exists(map_path)) {
    io::Json map = io::read_json(map_path);  // a named object: items() of a temporary would dangle
    for (auto& [key, value] : map.items()) config[key] = value;
  }
  auto special = [&](const char* key, const char* fallback) {
    return config.contains(key) && !config[key].is_null()
               ? token_content(config[key], key, config_path.string())
               : std::string(fallback);
  };
  impl->bos = special("bos_token", kStartOfText);
  impl->eos = special("eos_token", kEndOfText);
  impl->pad = pad_token.empty() ? special("pad_token", kEndOfText) : pad_token;
  impl->unk = special("unk_token", kEndOfText);
  // transformers' default is "unlimited"; every CLIP tokenizer of SD sets 77 (the position count).
  if (config.contains("model_max_length")) {
    const io::Json& v = config["model_max_length"];
    DL_CHECK(v.is_number_integer() && v.get<double>() >= 2 && v.get<double>() <= 1e6, config_path.string(),
             ": model_max_length must be an integer in [2, 1000000] (bos + tokens + eos), got ", v.dump());
    impl->model_max_length = v.get<int64_t>();
  }

  if (config.contains("added_tokens_decoder")) {
    for (auto& [id, value] : config["added_tokens_decoder"].items())
      impl->added_ids[token_content(value, "added_tokens_decoder." + id, config_path.string())] =
          std::stoll(id);
  }
  if (auto added_path = dir / "added_tokens.json"; std::filesystem::exists(added_path)) {
    io::Json added = io::read_json(added_path);
    for (auto& [token, id] : added.items()) impl->added_ids[token] = id.get<int64_t>();
  }
  for (const std::string* token : {&impl->bos, &impl->eos, &impl->pad, &impl->unk}) {
    if (impl->added_ids.count(*token)) continue;
    auto it = impl->vocab.find(*token);
    DL_CHECK(it != impl->vocab.end(), dir.string(), ": special token '", *token,
             "' is neither in vocab.json nor in added_tokens_decoder");
    impl->added_ids[*token] = it->second;
  }
  for (auto& [token, id] : impl->added_ids) impl->added.push_back({token, id});
  std::sort(impl->added.begin(), impl->added.end(),
            [](const Piece& a, const Piece& b) { return a.token.size() > b.token.size(); });
  impl->unk_id = impl->added_ids.at(impl->unk);
  impl->bos_id = impl->id_of(impl->bos);
  impl->eos_id = impl->id_of(impl->eos);
  impl->pad_id = impl->id_of(impl->pad);

  CLIPTokenizer tokenizer;
  tokenizer.impl_ = std::move(impl);
  return tokenizer;
}

CLIPTokenizer::Encoding CLIPTokenizer::encode(const std::string& text, bool pad_to_max) const {
  std::vector<Piece> pieces = impl_->tokenize(text);
  Encoding e;
  size_t n = pieces.size();
  size_t max_tokens = static_cast<size_t>(impl_->model_max_length - 2);
  if (pad_to_max && n > max_tokens) {
    n = max_tokens;  // truncation_side "right": the tail is dropped, eos stays last
    e.truncated = true;
  }
  e.input_ids.reserve(n + 2);
  e.input_ids.push_back(impl_->bos_id);
  for (size_t i = 0; i < n; ++i) e.input_ids.push_back(pieces[i].id);
  e.input_ids.push_back(impl_->eos_id);
  e.attention_mask.assign(e.input_ids.size(), 1);
  if (pad_to_max) {
    e.input_ids.resize(static_cast<size_t>(impl_->model_max_length), impl_->pad_id);
    e.attention_mask.resize(static_cast<size_t>(impl_->model_max_length), 0);
  }
  return e;
}

std::vector<std::string> CLIPTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> tokens;
  for (Piece& p : impl_->tokenize(text)) tokens.push_back(std::move(p.token));
  return tokens;
}

torch::Tensor CLIPTokenizer::encode_batch(const std::vector<std::string>& texts) const {
  auto ids = torch::empty({static_cast<int64_t>(texts.size()), impl_->model_max_length}, torch::kInt64);
  auto acc = ids.accessor<int64_t, 2>();
  for (size_t b = 0; b < texts.size(); ++b) {
    Encoding e = encode(texts[b], true);
    for (size_t i = 0; i < e.input_ids.size(); ++i)
      acc[static_cast<int64_t>(b)][static_cast<int64_t>(i)] = e.input_ids[i];
  }
  return ids;
}

int64_t CLIPTokenizer::token_to_id(const std::string& token) const {
  return impl_->id_of(token);
}
int64_t CLIPTokenizer::bos_token_id() const {
  return impl_->bos_id;
}
int64_t CLIPTokenizer::eos_token_id() const {
  return impl_->eos_id;
}
int64_t CLIPTokenizer::pad_token_id() const {
  return impl_->pad_id;
}
int64_t CLIPTokenizer::model_max_length() const {
  return impl_->model_max_length;
}
int64_t CLIPTokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->vocab.size());
}

}  // namespace dreamlora::text
