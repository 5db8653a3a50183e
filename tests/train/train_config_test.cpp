// The option table: aliases, TOML files, validation messages that name the flag, fingerprints.
#include "dreamlora/train/train_config.h"

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/train/trainer_state.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

namespace {
std::string validation_error(const TrainConfig& c) {
  try {
    c.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
TrainConfig valid() {
  TrainConfig c;
  c.model = "m";
  c.image_path = "i";
  c.prompt = "a photo of sks dog";
  return c;
}
}  // namespace

TEST(TrainConfig, DiffusersSpellingsAreAliases) {
  EXPECT_EQ(find_train_option("max_train_steps")->name, "num-steps");
  EXPECT_EQ(find_train_option("--instance_data_dir")->name, "image-path");
  EXPECT_EQ(find_train_option("checkpointing_steps")->name, "checkpointing-steps");
  EXPECT_EQ(find_train_option("no-such-flag"), nullptr);
}

TEST(TrainConfig, BadValuesNameTheFlag) {
  auto c = valid();
  c.resolution = 100;
  EXPECT_NE(validation_error(c).find("--resolution"), std::string::npos);
  c = valid();
  c.prior_preservation = true;
  EXPECT_NE(validation_error(c).find("--class-prompt"), std::string::npos);
  c = valid();
  c.identifier = "zwx";
  EXPECT_NE(validation_error(c).find("identifier 'zwx'"), std::string::npos);
  c = valid();
  c.mixed_precision = "fp8";
  EXPECT_NE(validation_error(c).find("--mixed-precision"), std::string::npos);
  EXPECT_EQ(validation_error(valid()), "");
  try {
    find_train_option("rank")->set(c, "four");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--rank"), std::string::npos);
  }
}

TEST(TrainConfig, TomlKeysAreLongFlagNames) {
  auto dir = dreamlora::testing::make_temp_dir("toml");
  std::ofstream(dir / "run.toml") << "model = \"/m\"\nnum-steps = 123\nlr = 0.0005\nrandom_flip = true\n";
  TrainConfig c;
  apply_toml_file(c, (dir / "run.toml").string());
  EXPECT_EQ(c.model, "/m");
  EXPECT_EQ(c.num_steps, 123);
  EXPECT_DOUBLE_EQ(c.lr, 0.0005);
  EXPECT_TRUE(c.random_flip);
  std::ofstream(dir / "bad.toml") << "learning_rat = 1\n";
  try {
    apply_toml_file(c, (dir / "bad.toml").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("learning_rat"), std::string::npos);
  }
}

TEST(TrainConfig, FingerprintIgnoresStepsButNotLearningRate) {
  auto a = valid(), b = valid();
  b.num_steps = 9999;
  b.checkpointing_steps = "7";
  EXPECT_TRUE(fingerprint_differences(result_settings(a), result_settings(b)).empty());
  b.lr = 3e-4;
  auto diffs = fingerprint_differences(result_settings(a), result_settings(b));
  ASSERT_EQ(diffs.size(), 1u);
  EXPECT_NE(diffs[0].find("lr"), std::string::npos);
}

TEST(TrainerState, Base64RoundTripsAnyBytes) {
  for (std::string s : {std::string(""), std::string("a"), std::string("ab"), std::string("abc"),
                        std::string("\0\xff\x10zz", 5)})
    EXPECT_EQ(base64_decode(base64_encode(s), "test"), s);
}

TEST(TrainConfig, DocsCliMdListsEveryFlagOfTheTable) {
  auto doc = dreamlora::testing::read_text(std::filesystem::path(DREAMLORA_SOURCE_DIR) / "docs" / "CLI.md");
  EXPECT_NE(doc.find(options_markdown()), std::string::npos)
      << "docs/CLI.md is out of date: regenerate it with `dreamlora train --flags-markdown`";
  auto readme = dreamlora::testing::read_text(std::filesystem::path(DREAMLORA_SOURCE_DIR) / "README.md");
  EXPECT_NE(readme.find(options_markdown()), std::string::npos) << "README.md's flag table is out of date";
}
