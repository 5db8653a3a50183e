// A tiny CLIP tokenizer for tiny test models.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace dreamlora::synth {

// Writes a small CLIP-format tokenizer into dir (created if needed): vocab.json with the 256 byte
// symbols, the same 256 with "</w>", one entry per learned merge, then <|startoftext|> and
// <|endoftext|>; merges.txt ("#version: 0.2" header); tokenizer_config.json; special_tokens_map.json.
// Merges are learned greedily (most frequent pair, ties by the pair's text) from corpus, or from a
// built-in English corpus of prompt-like sentences when corpus is empty. pad_token is
// "<|endoftext|>" (SD1.x) or "!" (SD2.x / SDXL tokenizer_2). Returns the vocabulary size.
int64_t write_tiny_bpe_tokenizer(const std::filesystem::path& dir, const std::string& corpus = "",
                                 int64_t num_merges = 200, const std::string& pad_token = "<|endoftext|>");

}  // namespace dreamlora::synth
