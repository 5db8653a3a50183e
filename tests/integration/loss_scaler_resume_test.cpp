// The loss scaler inside `dreamlora train` (enabled on CPU through the DREAMLORA_TEST_LOSS_SCALER hook,
// since fp16 itself needs a GPU): scaling by a power of two leaves fp32 training bit-identical, a step
// with inf/nan gradients is skipped with the scale halved, and the scale saved in the checkpoint makes
// the resumed run end byte-identical to the uninterrupted one.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct ScalerWorld {
  fs::path model, images;
};
const ScalerWorld& scaler_world() {
  static ScalerWorld w = [] {
    ScalerWorld w;
    const auto root = make_temp_dir("scaler-world");
    w.model = root / "tiny-sd";
    w.images = root / "subject";
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    return w;
  }();
  return w;
}

std::vector<std::string> scaler_train_args(const fs::path& out, int steps) {
  return {"--threads",
          "2",
          "train",
          "--model",
          scaler_world().model.string(),
          "--image-path",
          scaler_world().images.string(),
          "--prompt",
          "a photo of sks toy",
          "--resolution",
          "32",
          "--num-steps",
          std::to_string(steps),
          "--checkpointing-steps",
          "2",
          "--lr",
          "1e-3",
          "--log-every",
          "4",
          "--output-dir",
          out.string()};
}

std::string lora_bytes(const fs::path& out) {
  return read_text(out / "pytorch_lora_weights.safetensors");
}

int loss_lines(const fs::path& out) {
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += nlohmann::json::parse(line).contains("loss") ? 1 : 0;
  return n;
}

}  // namespace

TEST(LossScalerTraining, ScaledFp32TrainingEqualsUnscaledBitForBit) {
  auto plain = make_temp_dir("scaler-plain"), scaled = make_temp_dir("scaler-scaled");
  ASSERT_EQ(run_dreamlora(scaler_train_args(plain, 3)).exit_status, 0);
  auto r = run_dreamlora(scaler_train_args(scaled, 3), {"DREAMLORA_TEST_LOSS_SCALER=0"});
  ASSERT_EQ(r.exit_status, 0) << r.output;
  EXPECT_EQ(lora_bytes(plain), lora_bytes(scaled));
  auto meta =
      dreamlora::io::safetensors::File::open(scaled / "checkpoint-3" / "optimizer.safetensors").metadata();
  EXPECT_EQ(meta.at("loss_scale"), "65536");
  EXPECT_EQ(meta.at("loss_scale_growth_tracker"), "3");
  EXPECT_EQ(loss_lines(scaled), 3);  // every step logged, though the loss is read every 4 steps
}

TEST(LossScalerTraining, AnOverflowSkipsTheStepAndTheScaleSurvivesResume) {
  const std::vector<std::string> nan_at_3{"DREAMLORA_TEST_LOSS_SCALER=3"};
  auto full = make_temp_dir("scaler-full"), split = make_temp_dir("scaler-split");
  auto a = run_dreamlora(scaler_train_args(full, 6), nan_at_3);
  ASSERT_EQ(a.exit_status, 0) << a.output;
  EXPECT_NE(a.output.find("step 3: inf/nan"), std::string::npos) << a.output;
  EXPECT_NE(a.output.find("loss scale now 32768"), std::string::npos) << a.output;
  EXPECT_EQ(loss_lines(full), 6);

  auto env = nan_at_3;
  env.push_back("DREAMLORA_TEST_STOP_AT_STEP=4");
  auto b = run_dreamlora(scaler_train_args(split, 6), env);
  ASSERT_EQ(b.exit_status, 75) << b.output;
  auto meta =
      dreamlora::io::safetensors::File::open(split / "checkpoint-4" / "optimizer.safetensors").metadata();
  EXPECT_EQ(meta.at("step"), "3");  // 4 steps, one skipped
  EXPECT_EQ(meta.at("loss_scale"), "32768");
  EXPECT_EQ(meta.at("loss_scale_growth_tracker"), "1");
  EXPECT_EQ(loss_lines(split), 4);
  auto c = run_dreamlora(scaler_train_args(split, 6), nan_at_3);
  ASSERT_EQ(c.exit_status, 0) << c.output;
  EXPECT_NE(c.output.find("resumed from"), std::string::npos) << c.output;
  EXPECT_EQ(lora_bytes(full), lora_bytes(split));
  EXPECT_EQ(loss_lines(split), 6);
}
