// CLIP's byte-level BPE tokenizer, equal to transformers' slow CLIPTokenizer (4.38) without ftfy:
// added/special tokens are split out first, then BasicTokenizer clean-up, CLIP's pre-tokenisation
// pattern and BPE with "</w>" word ends. Decoding ids back to text is not implemented.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace dreamlora::text {

class CLIPTokenizer {
 public:
  struct Encoding {
    std::vector<int64_t> input_ids;       // bos, tokens, eos[, pad...]
    std::vector<int64_t> attention_mask;  // 1 for bos..eos, 0 for padding
    bool truncated = false;               // tokens past model_max_length - 2 were dropped
  };

  // Reads vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json (the latter
  // overrides, as in transformers) and added_tokens.json when present. pad_token (non-empty) replaces the
  // folder's: SD2 and SDXL's second tokenizer pad with "!" where the same BPE files of SD1.x pad with
  // "<|endoftext|>".
  static CLIPTokenizer load(const std::filesystem::path& dir, const std::string& pad_token = "");

  // pad_to_max: tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True),
  // the call every SD pipeline makes; otherwise tokenizer(text): bos + all tokens + eos, no padding.
  Encoding encode(const std::string& text, bool pad_to_max = true) const;
  // tokenizer.tokenize(text): BPE pieces and added tokens, without bos/eos.
  std::vector<std::string> tokenize(const std::string& text) const;
  // encode(text, true) of each text -> int64 [B, model_max_length]
  torch::Tensor encode_batch(const std::vector<std::string>& texts) const;

  int64_t token_to_id(const std::string& token) const;  // added tokens, then vocab, then unk
  int64_t bos_token_id() const;
  int64_t eos_token_id() const;
  int64_t pad_token_id() const;
  int64_t model_max_length() const;
  int64_t vocab_size() const;  // entries of vocab.json

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;  // copies share the vocabulary and the (thread-safe) BPE cache
};

}  // namespace dreamlora::text
