// `dreamlora inspect model.safetensors` names the family of a single-file checkpoint and the keys that decided it.
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
