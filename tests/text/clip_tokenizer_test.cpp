// CLIPTokenizer against transformers' slow CLIPTokenizer (fixtures/tokenizer/cases.json) and
// hand-derived expectations for the clean-up, the pattern and BPE.
#include "dreamlora/text/clip_tokenizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <thread>

#include "dreamlora/io/json.h"
#include "dreamlora/synth/clip_bpe_writer.h"
#include "test_util.h"

namespace dreamlora::text {
namespace {

using testing::fixtures_dir;

const CLIPTokenizer& sd_tokenizer() {
  static const CLIPTokenizer tok = CLIPTokenizer::load(fixtures_dir() / "tiny-sd" / "tokenizer");
  return tok;
}

// The SD1.x vocabulary with the SD2.x / SDXL tokenizer_2 convention pad_token "!" (id 0).
const CLIPTokenizer& bang_tokenizer() {
  static const CLIPTokenizer tok = [] {
    auto dir = testing::make_temp_dir("clip_tok_bang");
    for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"})
      std::filesystem::copy_file(fixtures_dir() / "tiny-sd" / "tokenizer" / f, dir / f);
    io::Json map = io::read_json(fixtures_dir() / "tiny-sd" / "tokenizer" / "special_tokens_map.json");
    map["pad_token"] = "!";
    std::ofstream(dir / "special_tokens_map.json") << map.dump();
    auto t = CLIPTokenizer::load(dir);
    std::filesystem::remove_all(dir);
    return t;
  }();
  return tok;
}

const io::Json& cases() {
  static const io::Json json = io::read_json(fixtures_dir() / "tokenizer" / "cases.json");
  return json;
}

TEST(CLIPTokenizer, LoadsSpecialTokenIdsAndLengthFromTheRealVocabulary) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.bos_token_id(), 49406);
  EXPECT_EQ(tok.eos_token_id(), 49407);
  EXPECT_EQ(tok.pad_token_id(), 49407);
  EXPECT_EQ(tok.model_max_length(), 77);
  EXPECT_EQ(bang_tokenizer().pad_token_id(), 0);
}

TEST(CLIPTokenizer, MatchesTransformersOnEveryFixtureCase) {
  REQUIRE_FIXTURES();
  const auto& all = cases()["cases"];
  ASSERT_GE(all.size(), 30u);
  for (const auto& c : all) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + io::Json(text).dump());
    auto padded = sd_tokenizer().encode(text);
    EXPECT_EQ(padded.input_ids, c["input_ids"].get<std::vector<int64_t>>());
    EXPECT_EQ(padded.attention_mask, c["attention_mask"].get<std::vector<int64_t>>());
    EXPECT_EQ(padded.truncated, c["truncated"].get<bool>());
    auto full = sd_tokenizer().encode(text, /*pad_to_max=*/false);
    EXPECT_EQ(full.input_ids, c["untruncated_ids"].get<std::vector<int64_t>>());
    EXPECT_EQ(static_cast<int64_t>(full.input_ids.size()), c["untruncated_length"].get<int64_t>());
    EXPECT_EQ(sd_tokenizer().tokenize(text), c["bpe_tokens"].get<std::vector<std::string>>());
    auto bang = bang_tokenizer().encode(text);
    EXPECT_EQ(bang.input_ids, c["input_ids_pad_bang"].get<std::vector<int64_t>>());
    EXPECT_EQ(bang.attention_mask, c["attention_mask_pad_bang"].get<std::vector<int64_t>>());
    EXPECT_EQ(bang_tokenizer().tokenize(text), c["bpe_tokens_pad_bang"].get<std::vector<std::string>>());
  }
}

TEST(CLIPTokenizer, SdxlTokenizerTwoPadsWithBangAndSplitsLiteralBangs) {
  REQUIRE_FIXTURES();
  auto tok2 = CLIPTokenizer::load(fixtures_dir() / "tiny-sdxl" / "tokenizer_2");
  EXPECT_EQ(tok2.pad_token_id(), 0);
  EXPECT_EQ(tok2.eos_token_id(), 999);
  auto tokens = tok2.tokenize("wow!!");
  ASSERT_GE(tokens.size(), 3u);
  EXPECT_EQ(tokens[tokens.size() - 1], "!");
  EXPECT_EQ(tokens[tokens.size() - 2], "!");
  auto e = tok2.encode("wow!!");
  EXPECT_EQ(e.input_ids[0], 998);
  EXPECT_EQ(e.input_ids.back(), 0);
}

TEST(CLIPTokenizer, BatchHelperStacksPaddedIdsAsInt64) {
  REQUIRE_FIXTURES();
  std::vector<std::string> prompts = {"a photo of sks dog", ""};
  auto ids = sd_tokenizer().encode_batch(prompts);
  ASSERT_EQ(ids.sizes(), (std::vector<int64_t>{2, 77}));
  EXPECT_EQ(ids.scalar_type(), torch::kInt64);
  EXPECT_EQ(ids[0][0].item<int64_t>(), 49406);
  EXPECT_EQ(ids[1][1].item<int64_t>(), 49407);
  auto expected = sd_tokenizer().encode(prompts[0]).input_ids;
  EXPECT_TRUE(torch::equal(ids[0], torch::tensor(expected, torch::kInt64)));
}

TEST(CLIPTokenizer, WhitespaceVariantsGiveIdenticalIds) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  auto base = tok.encode("a photo of sks dog").input_ids;
  EXPECT_EQ(tok.encode("  a   photo\tof\n\nsks \r\n dog  ").input_ids, base);
  EXPECT_EQ(tok.encode("a\u00a0photo\u3000of\u2028sks\u2029dog").input_ids,
            base);  // NBSP, ideographic, LS, PS
  EXPECT_EQ(tok.encode("A PHOTO Of SKS Dog").input_ids, base);
}

TEST(CLIPTokenizer, FormatAndControlCharactersJoinTheWordsAroundThem) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  // U+200B (Cf), U+0007 (Cc) and U+FEFF (Cf) are dropped, not turned into spaces.
  EXPECT_EQ(tok.tokenize("do\u200bg"), tok.tokenize("dog"));
  EXPECT_EQ(tok.tokenize("do\x07g"), tok.tokenize("dog"));
  EXPECT_EQ(tok.tokenize("\ufeffdog"), tok.tokenize("dog"));
  // An invalid UTF-8 byte decodes to U+FFFD, which the clean-up drops as well.
  EXPECT_EQ(tok.tokenize(std::string("do\xff") + "g"), tok.tokenize("dog"));
}

TEST(CLIPTokenizer, NumbersSplitIntoSingleDigitsAndContractionsSplitOff) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  EXPECT_EQ(tok.tokenize("2048"), (std::vector<std::string>{"2</w>", "0</w>", "4</w>", "8</w>"}));
  // Non-ASCII digits are \p{N} too: Arabic-Indic digits split one by one.
  EXPECT_EQ(tok.tokenize("\u0661\u0662").size(), tok.tokenize("\u0661").size() * 2);
  // "'ll" is a contraction, "'x" is not: the apostrophe then runs with the following punctuation.
  EXPECT_EQ(tok.tokenize("we'll"), (std::vector<std::string>{"we</w>", "'ll</w>"}));
  EXPECT_EQ(tok.tokenize("WE'LL"), tok.tokenize("we'll"));
  auto x = tok.tokenize("a'x");
  ASSERT_EQ(x.size(), 3u);
  EXPECT_EQ(x[1], "'</w>");
}

TEST(CLIPTokenizer, CjkIdeographsBecomeSeparateWordsButKanaDoesNot) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  // Each ideograph is spaced out by the clean-up, so "日本" tokenizes as "日 本".
  EXPECT_EQ(tok.tokenize("日本"), tok.tokenize("日 本"));
  EXPECT_NE(tok.tokenize("のテ"), tok.tokenize("の テ"));
}

TEST(CLIPTokenizer, NfcAndFullLowercasingAreApplied) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  EXPECT_EQ(tok.tokenize("e\u0301"), tok.tokenize("\u00e9"));  // combining acute composes
  EXPECT_EQ(tok.tokenize("\u00c9COLE"), tok.tokenize("\u00e9cole"));
  // Python's lower(): capital sigma at a word end is final sigma, elsewhere plain sigma.
  EXPECT_EQ(tok.tokenize("\u039f\u03a3\u039f\u03a3"), tok.tokenize("\u03bf\u03c3\u03bf\u03c2"));
  // No accent stripping (strip_accents=False): é stays a different word from e.
  EXPECT_NE(tok.tokenize("caf\u00e9"), tok.tokenize("cafe"));
}

TEST(CLIPTokenizer, EmojiRunsStayOneWordOfByteSymbols) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  auto pieces = tok.tokenize("\U0001F436\U0001F436 dog");
  ASSERT_GE(pieces.size(), 2u);
  EXPECT_EQ(pieces.back(), "dog</w>");
  // Both emoji belong to one [^\s\p{L}\p{N}]+ word: exactly one piece before "dog" ends with </w>.
  int ends = 0;
  for (size_t i = 0; i + 1 < pieces.size(); ++i)
    ends += pieces[i].size() > 4 && pieces[i].substr(pieces[i].size() - 4) == "</w>";
  EXPECT_EQ(ends, 1);
}

TEST(CLIPTokenizer, LongPromptsKeepBosPlus75TokensPlusEos) {
  REQUIRE_FIXTURES();
  const auto& tok = sd_tokenizer();
  std::string text;
  for (int i = 0; i < 100; ++i) text += std::to_string(i % 10) + " ";
  auto full = tok.encode(text, false);
  ASSERT_EQ(full.input_ids.size(), 102u);
  EXPECT_FALSE(full.truncated);
  auto cut = tok.encode(text);
  ASSERT_EQ(cut.input_ids.size(), 77u);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.input_ids.back(), 49407);
  EXPECT_EQ(std::vector<int64_t>(cut.input_ids.begin(), cut.input_ids.end() - 1),
            std::vector<int64_t>(full.input_ids.begin(), full.input_ids.begin() + 76));
  EXPECT_EQ(cut.attention_mask, std::vector<int64_t>(77, 1));
  // Exactly 75 tokens fit without truncation.
  std::string fits;
  for (int i = 0; i < 75; ++i) fits += "a ";
  EXPECT_FALSE(tok.encode(fits).truncated);
  EXPECT_TRUE(tok.encode(fits + "a").truncated);
}

TEST(CLIPTokenizer, UppercaseSpecialTokenTextIsRecognisedAfterLowercasing) {
  REQUIRE_FIXTURES();
  // The added-token split is case-sensitive, but the clean-up lower-cases and the pattern's first
  // alternative then matches, and BPE's cache maps it to itself.
  auto e = sd_tokenizer().encode("<|ENDOFTEXT|>", false);
  EXPECT_EQ(e.input_ids, (std::vector<int64_t>{49406, 49407, 49407}));
}

TEST(CLIPTokenizer, ConcurrentEncodingAgreesWithSerial) {
  REQUIRE_FIXTURES();
  auto tok = CLIPTokenizer::load(fixtures_dir() / "tiny-sd" / "tokenizer");  // fresh, empty cache
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i)
    texts.push_back("photo number " + std::to_string(i) + " of sks dog variant" + std::to_string(i % 7));
  std::vector<std::vector<int64_t>> a(texts.size()), b(texts.size());
  std::thread t1([&] {
    for (size_t i = 0; i < texts.size(); ++i) a[i] = tok.encode(texts[i]).input_ids;
  });
  std::thread t2([&] {
    for (size_t i = texts.size(); i-- > 0;) b[i] = tok.encode(texts[i]).input_ids;
  });
  t1.join();
  t2.join();
  EXPECT_EQ(a, b);
}

TEST(CLIPTokenizer, MalformedVocabIsReportedWithTheFileAndTheToken) {
  auto dir = testing::make_temp_dir("clip_tok_vocab");
  synth::write_tiny_bpe_tokenizer(dir, "", 10);
  const std::pair<const char*, const char*> cases[] = {
      {R"({"a</w>": 1, "b</w>": "two"})", "'b</w>'"},
      {R"(["a", "b"])", "expected an object"},
      {R"({"a</w>": {"nested": 1}})", "expected an object"},
      {R"({"a</w>": 1,)", "invalid JSON"},
  };
  for (const auto& [text, expected] : cases) {
    std::ofstream(dir / "vocab.json", std::ios::trunc) << text;
    try {
      CLIPTokenizer::load(dir);
      ADD_FAILURE() << "expected an error for " << text;
    } catch (const std::exception& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("vocab.json"), std::string::npos) << what;
      EXPECT_NE(what.find(expected), std::string::npos) << what;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(CLIPTokenizer, MissingFilesAndBadConfigAreReportedByPath) {
  auto dir = testing::make_temp_dir("clip_tok_bad");
  try {
    CLIPTokenizer::load(dir);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.json"), std::string::npos) << e.what();
  }
  synth::write_tiny_bpe_tokenizer(dir, "", 10);
  std::ofstream(dir / "tokenizer_config.json") << R"({"model_max_length": 1})";
  try {
    CLIPTokenizer::load(dir);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("model_max_length"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(TinyBpeTokenizer, RoundTripsAndTokenizesThePromptIntoKnownPieces) {
  auto dir = testing::make_temp_dir("tiny_bpe");
  int64_t n = synth::write_tiny_bpe_tokenizer(dir, "", 120);
  auto tok = CLIPTokenizer::load(dir);
  EXPECT_EQ(tok.vocab_size(), n);
  EXPECT_GT(n, 512 + 2);
  EXPECT_LE(n, 512 + 120 + 2);
  EXPECT_EQ(tok.bos_token_id(), n - 2);
  EXPECT_EQ(tok.eos_token_id(), n - 1);
  EXPECT_EQ(tok.pad_token_id(), n - 1);
  EXPECT_EQ(tok.token_to_id("!"), 0);
  auto pieces = tok.tokenize("a photo of sks dog");
  std::string joined;
  for (const auto& p : pieces) {
    joined += p;
    EXPECT_LT(tok.token_to_id(p), n - 2) << p;  // a real vocabulary entry, not unk
  }
  EXPECT_EQ(joined, "a</w>photo</w>of</w>sks</w>dog</w>");
  EXPECT_LT(pieces.size(), 16u);  // merges learned from the corpus shorten the words
  EXPECT_EQ(pieces.front(), "a</w>");
  auto e = tok.encode("a photo of sks dog");
  EXPECT_EQ(e.input_ids.size(), 77u);
  EXPECT_EQ(e.input_ids[0], n - 2);
  // Deterministic: a second write gives the same files.
  auto dir2 = testing::make_temp_dir("tiny_bpe2");
  synth::write_tiny_bpe_tokenizer(dir2, "", 120);
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(slurp(dir / "merges.txt"), slurp(dir2 / "merges.txt"));
  EXPECT_EQ(slurp(dir / "vocab.json"), slurp(dir2 / "vocab.json"));
  EXPECT_EQ(slurp(dir / "merges.txt").rfind("#version: 0.2\n", 0), 0u);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir2);
}

TEST(TinyBpeTokenizer, BangPadTokenIsWrittenAsAnAddedTokenWithIdZero) {
  auto dir = testing::make_temp_dir("tiny_bpe_bang");
  synth::write_tiny_bpe_tokenizer(dir, "a photo of a dog", 5, "!");
  auto tok = CLIPTokenizer::load(dir);
  EXPECT_EQ(tok.pad_token_id(), 0);
  auto expected = tok.tokenize("dog");
  expected.push_back("!");
  EXPECT_EQ(tok.tokenize("dog!"), expected);
  EXPECT_THROW(synth::write_tiny_bpe_tokenizer(dir, "", 5, "<pad>"), std::exception);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::text
