// Tokenizing 10,000 varied prompts with the real 49,408-entry CLIP vocabulary (fixtures tiny-sd/tokenizer),
// with a cold BPE cache (fresh tokenizer, its load not timed) and a warm one; plus the load itself.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/text/clip_tokenizer.h"

namespace {

std::filesystem::path tokenizer_dir() {
  const char* env = std::getenv("DREAMLORA_FIXTURES");
  std::filesystem::path root = env ? env : DREAMLORA_FIXTURES_DIR;
  return root / "tiny-sd" / "tokenizer";
}

// Deterministic mix of subjects, styles, numbers, punctuation, weights and non-ASCII text.
std::vector<std::string> make_prompts(size_t n) {
  const char* subjects[] = {"a photo of sks dog",
                            "A painting of a squirrel eating a burger",
                            "portrait of an old sailor",
                            "a red sports car on a mountain road",
                            "the skyline of Tōkyō at night",
                            "café in Paris",
                            "a cyberpunk street market",
                            "日本の庭園",
                            "an astronaut riding a horse",
                            "a bowl of ramen"};
  const char* styles[] = {"highly detailed",   "trending on artstation", "8k, ultra realistic",
                          "(masterpiece:1.2)", "oil on canvas",          "35mm photograph, bokeh",
                          "by Greg Rutkowski", "[lowres], {blurry}",     "golden hour lighting!!!",
                          "emoji ✨🚀"};
  std::vector<std::string> prompts;
  prompts.reserve(n);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::string p = subjects[x % 10];
    for (int k = 0; k < static_cast<int>((x >> 8) % 4) + 1; ++k)
      p += std::string(", ") + styles[(x >> (12 + 4 * k)) % 10];
    p += ", seed " + std::to_string(x % 100000);
    prompts.push_back(std::move(p));
  }
  return prompts;
}

void BM_Tokenize10kPromptsColdCache(benchmark::State& state) {
  auto prompts = make_prompts(10000);
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = dreamlora::text::CLIPTokenizer::load(tokenizer_dir());
    state.ResumeTiming();
    for (const auto& p : prompts) benchmark::DoNotOptimize(tok.encode(p));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(prompts.size()));
}
BENCHMARK(BM_Tokenize10kPromptsColdCache)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_Tokenize10kPromptsWarmCache(benchmark::State& state) {
  auto prompts = make_prompts(10000);
  auto tok = dreamlora::text::CLIPTokenizer::load(tokenizer_dir());
  for (const auto& p : prompts) tok.encode(p);
  for (auto _ : state) {
    for (const auto& p : prompts) benchmark::DoNotOptimize(tok.encode(p));
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(prompts.size()));
}
BENCHMARK(BM_Tokenize10kPromptsWarmCache)->Unit(benchmark::kMillisecond);

void BM_LoadTokenizer(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(dreamlora::text::CLIPTokenizer::load(tokenizer_dir()));
}
BENCHMARK(BM_LoadTokenizer)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
