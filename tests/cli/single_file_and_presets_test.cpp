// `dreamlora inspect model.safetensors` names the family of a single-file checkpoint and the keys that
// decided it; `make-model` says what its weights are for and refuses a truncated tokenizer vocabulary.
#include "test_util.h"

using namespace dreamlora::testing;

TEST(InspectSingleFile, SaysWhichFamilyAndWhy) {
  REQUIRE_FIXTURES();
  auto sd = run_dreamlora({"inspect", (fixtures_dir() / "tiny-sd" / "single-file.safetensors").string()});
  ASSERT_EQ(sd.exit_status, 0) << sd.output;
  EXPECT_NE(sd.output.find("single-file SD1.x checkpoint"), std::string::npos) << sd.output;
  EXPECT_NE(sd.output.find("cond_stage_model.transformer."), std::string::npos) << sd.output;
  auto xl = run_dreamlora({"inspect", (fixtures_dir() / "tiny-sdxl" / "single-file.safetensors").string()});
  ASSERT_EQ(xl.exit_status, 0) << xl.output;
  EXPECT_NE(xl.output.find("single-file SDXL base checkpoint"), std::string::npos) << xl.output;
  EXPECT_NE(xl.output.find("text_encoder_2"), std::string::npos) << xl.output;
}

TEST(MakeModel, RefusesATokenizerWithoutTheFullClipVocabulary) {
  REQUIRE_FIXTURES();
  auto out = make_temp_dir("make-model-vocab");
  auto r = run_dreamlora({"make-model", "--preset", "sd15", "--tokenizer",
                          (fixtures_dir() / "tiny-sdxl" / "tokenizer").string(), (out / "m").string()});
  EXPECT_NE(r.exit_status, 0);
  EXPECT_NE(r.output.find("49408"), std::string::npos) << r.output;
  std::filesystem::remove_all(out);
}

TEST(MakeModel, HelpSaysTheWeightsAreRandomAndForBenchmarks) {
  auto r = run_dreamlora({"make-model", "--help"});
  EXPECT_EQ(r.exit_status, 0);
  EXPECT_NE(r.output.find("RANDOM weights, for benchmarks and tests"), std::string::npos) << r.output;
}
