// Settings used only late in a run (validation images) or combinations that give wrong results are
// refused before the first step, naming the flags.
#include "dreamlora/common/error.h"
#include "dreamlora/train/train_config.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

namespace {
std::string late_setting_error(const TrainConfig& c) {
  try {
    c.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
TrainConfig late_settings_base() {
  TrainConfig c;
  c.model = "m";
  c.image_path = "i";
  c.prompt = "a photo of sks dog";
  c.validation_prompt = "a photo of sks dog on the moon";
  return c;
}
}  // namespace

TEST(TrainConfigLateSettings, ValidationSettingsAreCheckedUpFront) {
  EXPECT_EQ(late_setting_error(late_settings_base()), "");
  auto c = late_settings_base();
  c.validation_sampler = "no-such-sampler";
  EXPECT_NE(late_setting_error(c).find("--validation-sampler: unknown sampler 'no-such-sampler'"),
            std::string::npos);
  c = late_settings_base();
  c.num_validation_images = 0;
  EXPECT_NE(late_setting_error(c).find("--num-validation-images"), std::string::npos);
  c = late_settings_base();
  c.validation_inference_steps = 0;
  EXPECT_NE(late_setting_error(c).find("--validation-inference-steps"), std::string::npos);
  c = late_settings_base();
  c.validation_steps = -1;
  EXPECT_NE(late_setting_error(c).find("--validation-steps"), std::string::npos);
  c = late_settings_base();
  c.max_runtime = "soon";
  EXPECT_NE(late_setting_error(c).find("--max-runtime"), std::string::npos);
}

TEST(TrainConfigLateSettings, GradientCheckpointingWithLoraDropoutIsRefusedNamingBoth) {
  auto c = late_settings_base();
  c.gradient_checkpointing = true;
  EXPECT_EQ(late_setting_error(c), "");
  c.lora_dropout = 0.1;
  const std::string error = late_setting_error(c);
  EXPECT_NE(error.find("--gradient-checkpointing"), std::string::npos) << error;
  EXPECT_NE(error.find("--lora-dropout"), std::string::npos) << error;
}
