// BasicTokenizer clean-up and CLIP's pre-tokenisation pattern over utf8proc's Unicode tables.
// Each step cites the Python it reproduces (transformers/models/clip/tokenization_clip.py, 4.38).
#include "dreamlora/text/clip_text_cleanup.h"

#include <utf8proc.h>

#include <cstdlib>

namespace dreamlora::text::clip_text {
namespace {

constexpr char32_t kReplacement = 0xFFFD;

utf8proc_category_t category(char32_t cp) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

bool is_letter(char32_t cp) {  // \p{L}
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t cp) {  // \p{N}
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

// Python's str.isspace(): what str.split() and the regex's \s split on.
bool is_python_space(char32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85) return true;
  if (cp < 0x80) return false;
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

// tokenization_utils._is_whitespace
bool is_bert_whitespace(char32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  return cp >= 0x80 && category(cp) == UTF8PROC_CATEGORY_ZS;
}

// tokenization_utils._is_control: every "C*" category (Cc, Cf, Cs, Co, Cn) except \t \n \r.
bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
      return true;
    default:
      return false;
  }
}

// BasicTokenizer._is_chinese_char
bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// Unicode "Cased" and "Case_Ignorable", close enough for Python's final-sigma rule (utf8proc has
// neither property; the rule only decides between σ and ς).
bool is_cased(char32_t cp) {
  auto c = category(cp);
  if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return true;
  auto i = static_cast<utf8proc_int32_t>(cp);
  return utf8proc_tolower(i) != i || utf8proc_toupper(i) != i;
}

bool is_case_ignorable(char32_t cp) {
  switch (cp) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A:
      return true;
    default:
      break;
  }
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_ME || c == UTF8PROC_CATEGORY_CF ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_SK;
}

// Python's handle_capital_sigma (Objects/unicodeobject.c): Σ lowers to ς at the end of a word.
char32_t lower_sigma(const std::u32string& s, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) --j;
  bool final_sigma = j > 0 && is_cased(s[j - 1]);
  if (final_sigma) {
    size_t k = i + 1;
    while (k < s.size() && is_case_ignorable(s[k])) ++k;
    final_sigma = k == s.size() || !is_cased(s[k]);
  }
  return final_sigma ? 0x3C2 : 0x3C3;
}

// Python's str.lower(): simple mappings, the one unconditional multi-character mapping of
// SpecialCasing.txt (İ -> i + combining dot above), and the final-sigma context.
std::u32string python_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char32_t cp = s[i];
    if (cp < 0x80) {
      out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    } else if (cp == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
    } else if (cp == 0x3A3) {
      out.push_back(lower_sigma(s, i));
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

std::u32string nfc(const std::u32string& text) {
  bool ascii = true;
  for (char32_t cp : text) ascii = ascii && cp < 0x80;
  if (ascii) return text;  // ASCII is already NFC and composes with nothing
  std::string utf8 = encode_utf8(text);
  utf8proc_uint8_t* out = nullptr;
  auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                        static_cast<utf8proc_ssize_t>(utf8.size()), &out,
                        static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return text;  // only on invalid input, which decode_utf8 never produces
  std::u32string result =
      decode_utf8(std::string_view(reinterpret_cast<const char*>(out), static_cast<size_t>(n)));
  std::free(out);
  return result;
}

// The pattern's literals under IGNORECASE: after lower-casing, only U+017F (long s) still folds to
// an ASCII letter of the literals ('s').
bool literal_at(const std::u32string& s, size_t i, std::u32string_view lit) {
  if (s.size() - i < lit.size()) return false;
  for (size_t k = 0; k < lit.size(); ++k) {
    char32_t c = s[i + k];
    if (c == 0x17F) c = 's';
    if (c != lit[k]) return false;
  }
  return true;
}

// Length of the match of the alternatives before [\p{L}]+ at i, or 0.
size_t special_or_contraction(const std::u32string& s, size_t i) {
  static const std::u32string_view kLiterals[] = {
      U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  if (s[i] != '<' && s[i] != '\'') return 0;
  for (auto lit : kLiterals) {
    if (literal_at(s, i, lit)) return lit.size();
  }
  return 0;
}

}  // namespace

const std::array<unsigned char, 256>& byte_vocab_order() {
  static const std::array<unsigned char, 256> order = [] {
    std::array<unsigned char, 256> o{};
    size_t n = 0;
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    for (int b = 0; b < 256; ++b)
      if (printable(b)) o[n++] = static_cast<unsigned char>(b);
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) o[n++] = static_cast<unsigned char>(b);
    return o;
  }();
  return order;
}

const std::array<std::string, 256>& byte_encoder() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    char32_t next = 256;  // non-printable bytes map to 256, 257, ... in byte order
    for (unsigned char b : byte_vocab_order()) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      append_utf8(t[b], printable ? char32_t(b) : next++);
    }
    return t;
  }();
  return table;
}

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int len = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? (b <= 0xEF ? 3 : 0) : b >= 0xC2 ? 2 : 0;
    char32_t cp = len == 2 ? b & 0x1F : len == 3 ? b & 0x0F : b & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    ok = ok && !(len == 3 && cp < 0x800) && !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
         !(cp >= 0xD800 && cp <= 0xDFFF);
    out.push_back(ok ? cp : kReplacement);
    i += ok ? static_cast<size_t>(len) : 1;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

std::u32string basic_clean(std::string_view text) {
  // _clean_text (drop NUL, U+FFFD and controls; whitespace -> ' ') and _tokenize_chinese_chars.
  std::u32string cleaned;
  for (char32_t cp : decode_utf8(text)) {
    if (cp == 0 || cp == kReplacement || is_bert_control(cp)) continue;
    if (is_bert_whitespace(cp)) {
      cleaned.push_back(' ');
    } else if (is_cjk(cp)) {
      cleaned.push_back(' ');
      cleaned.push_back(cp);
      cleaned.push_back(' ');
    } else {
      cleaned.push_back(cp);
    }
  }
  // NFC, then whitespace_tokenize (str.split()) and " ".join.
  std::u32string normalized = nfc(cleaned);
  std::u32string joined;
  joined.reserve(normalized.size());
  for (char32_t cp : normalized) {
    if (is_python_space(cp)) {
      if (!joined.empty() && joined.back() != ' ') joined.push_back(' ');
    } else {
      joined.push_back(cp);
    }
  }
  if (!joined.empty() && joined.back() == ' ') joined.pop_back();
  // token.lower() per token equals lower() of the joined text: a space is neither cased nor
  // case-ignorable, so the final-sigma context never crosses it.
  return python_lower(joined);
}

std::vector<std::string> pre_tokenize(const std::u32string& s) {
  std::vector<std::string> pieces;
  size_t i = 0, n = s.size();
  while (i < n) {
    size_t end = i;
    if (size_t len = special_or_contraction(s, i)) {
      end = i + len;
    } else if (is_letter(s[i])) {
      while (end < n && is_letter(s[end])) ++end;
    } else if (is_number(s[i])) {
      end = i + 1;
    } else if (!is_python_space(s[i])) {
      while (end < n && !is_python_space(s[end]) && !is_letter(s[end]) && !is_number(s[end])) ++end;
    }
    if (end == i) {  // whitespace: no alternative matches here
      ++i;
      continue;
    }
    std::string piece;
    for (size_t k = i; k < end; ++k) append_utf8(piece, s[k]);
    pieces.push_back(std::move(piece));
    i = end;
  }
  return pieces;
}

}  // namespace dreamlora::text::clip_text
