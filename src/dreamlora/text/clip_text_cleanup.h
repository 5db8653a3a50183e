// Text clean-up and pre-tokenisation of transformers' slow CLIPTokenizer (4.38) when ftfy is absent:
// BasicTokenizer(strip_accents=False, do_split_on_punc=False) then CLIP's regex, as a UTF-8 scanner.
// Internal to the text area; the public API is clip_tokenizer.h.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace dreamlora::text::clip_text {

// UTF-8 -> code points; an invalid or truncated sequence becomes U+FFFD (which the clean-up drops).
std::u32string decode_utf8(std::string_view text);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(const std::u32string& text);

// " ".join(BasicTokenizer.tokenize(text)): control and format characters dropped, whitespace collapsed,
// CJK ideographs spaced, NFC, Python str.lower() (full mapping incl. final sigma). No accent stripping.
std::u32string basic_clean(std::string_view text);

// re.findall of CLIP's pattern (IGNORECASE) on cleaned text, each match as UTF-8:
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
std::vector<std::string> pre_tokenize(const std::u32string& cleaned);

// GPT-2/CLIP bytes_to_unicode(): byte -> the UTF-8 of its printable stand-in character.
const std::array<std::string, 256>& byte_encoder();
// The bytes in the order of that dict (printable ranges first), which is CLIP's vocab order.
const std::array<unsigned char, 256>& byte_vocab_order();

}  // namespace dreamlora::text::clip_text
