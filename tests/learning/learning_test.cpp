// Does training learn? A shortened DreamBooth run on the tiny pretrained world model
// (assets/tiny-world-sd), then `dreamlora evaluate`: the subject's share among the samples of "a photo of
// sks toy" must rise above a threshold, and must stay low when the loss is broken on purpose
// (DREAMLORA_TEST_BROKEN_LOSS=1), so the measure itself is shown to notice a trainer that does not learn.
// Without the model folder the learning tests skip (fail under CI=true); the evaluate wiring test runs
// on a random tiny model everywhere.
#include <filesystem>

#include "dreamlora/io/json.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace learning_test {

// The knobs, in one place: the quick start's settings (scripts/quickstart.sh). Measured on the shipped model
// (assets/tiny-world-sd/README.md, Debian's libtorch 1.13): subject fidelity 1/16 -> 13/16 with them on these
// 16 seeds (39/64 with 64); the threshold sits well below, as single runs spread widely.
constexpr int kTrainSteps = 1200;
constexpr const char* kLearningRate = "1e-3";
constexpr const char* kRank = "8";
constexpr const char* kLoraTargets = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2";
constexpr int kSubjectImages = 6;
constexpr int kEvalSamples = 16;
constexpr int kEvalSteps = 20;
constexpr const char* kEvalGuidance = "7.5";
constexpr double kMinSubjectFidelityAfterTraining = 0.5;
constexpr double kMaxSubjectFidelityWithBrokenLoss = 0.15;

fs::path world_model() {
  return fs::path(DREAMLORA_SOURCE_DIR) / "assets" / "tiny-world-sd";
}

#define REQUIRE_WORLD_MODEL()                                                                        \
  do {                                                                                               \
    if (!fs::is_regular_file(world_model() / "model_index.json")) {                                  \
      if (running_in_ci()) FAIL() << world_model() << " missing under CI (make it with `pretrain`)"; \
      GTEST_SKIP() << world_model()                                                                  \
                   << " not found (the tiny pretrained world model); learning test "                 \
                      "skipped";                                                                     \
    }                                                                                                \
  } while (0)

struct Scores {
  double subject_before = 0, subject_after = 0;
};

Scores read_subject_fidelity(const fs::path& scores_json) {
  const auto j = dreamlora::io::read_json(scores_json);
  const auto& m = j.at("metrics").at("subject_fidelity");
  return {m.at("before").at("share").get<double>(), m.at("after").at("share").get<double>()};
}

void run_ok(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  auto r = run_dreamlora(args, env);
  ASSERT_EQ(r.exit_status, 0) << r.output;
}

std::vector<std::string> evaluate_args(const fs::path& model, const fs::path& out, int samples, int steps) {
  return {"evaluate",
          "--model",
          model.string(),
          "--output-dir",
          out.string(),
          "--num-samples",
          std::to_string(samples),
          "--steps",
          std::to_string(steps),
          "--guidance-scale",
          kEvalGuidance};
}

// Trains on the subject for kTrainSteps and evaluates before/after; env goes to the trainer only.
Scores train_and_evaluate(const std::string& tag, const std::vector<std::string>& env) {
  const auto dir = make_temp_dir(tag);
  Scores s;
  [&] {
    run_ok({"make-world-data", (dir / "subject").string(), "--subject", "--count",
            std::to_string(kSubjectImages), "--size", "64"});
    run_ok({"train",
            "--model",
            world_model().string(),
            "--image-path",
            (dir / "subject").string(),
            "--prompt",
            "a photo of sks toy",
            "--resolution",
            "64",
            "--num-steps",
            std::to_string(kTrainSteps),
            "--lr",
            kLearningRate,
            "--rank",
            kRank,
            "--checkpointing-steps",
            std::to_string(kTrainSteps),
            "--output-dir",
            (dir / "out").string(),
            "--identifier",
            "sks",
            "--snr-gamma",
            "5",
            "--train-text-encoder",
            "--lora-targets",
            kLoraTargets,
            "--prior-preservation",
            "--class-prompt",
            "a photo of a toy",
            "--class-image-path",
            (dir / "class").string(),
            "--num-class-images",
            "12",
            "--threads",
            "2"},
           env);
    run_ok(evaluate_args(world_model(), dir / "out", kEvalSamples, kEvalSteps));
    s = read_subject_fidelity(dir / "out" / "evaluation" / "scores.json");
  }();
  std::cout << "[ learning ] " << tag << ": subject fidelity before " << s.subject_before << ", after "
            << s.subject_after << "\n";
  fs::remove_all(dir);
  return s;
}

TEST(Learning, TrainingTheWorldModelTeachesItTheSubject) {
  REQUIRE_WORLD_MODEL();
  auto s = train_and_evaluate("learning-ok", {});
  EXPECT_GE(s.subject_after, kMinSubjectFidelityAfterTraining);
  EXPECT_GT(s.subject_after, s.subject_before);
}

TEST(Learning, ABrokenLossLeavesTheSubjectUnlearned) {
  REQUIRE_WORLD_MODEL();
  auto s = train_and_evaluate("learning-broken", {"DREAMLORA_TEST_BROKEN_LOSS=1"});
  EXPECT_LE(s.subject_after, kMaxSubjectFidelityWithBrokenLoss);
}

// The evaluate command's outputs, on a random tiny model (its scores mean nothing).
TEST(Learning, EvaluateWritesScoresGridAndAModelCardSection) {
  const auto dir = make_temp_dir("evaluate-wiring");
  dreamlora::synth::write_tiny_model(dir / "tiny-sd", {});
  run_ok({"make-world-data", (dir / "subject").string(), "--subject", "--count", "2", "--size", "32"});
  run_ok({"--threads", "2", "train", "--model", (dir / "tiny-sd").string(), "--image-path",
          (dir / "subject").string(), "--prompt", "a photo of sks toy", "--resolution", "32", "--num-steps",
          "1", "--output-dir", (dir / "out").string()});
  auto r = run_dreamlora({"--threads", "2", "evaluate", "--model", (dir / "tiny-sd").string(), "--output-dir",
                          (dir / "out").string(), "--num-samples", "1", "--steps", "1"});
  ASSERT_EQ(r.exit_status, 0) << r.output;
  EXPECT_NE(r.output.find("subject_fidelity"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("grid:"), std::string::npos) << r.output;
  const auto s = read_subject_fidelity(dir / "out" / "evaluation" / "scores.json");
  EXPECT_GE(s.subject_after, 0.0);
  EXPECT_TRUE(fs::is_regular_file(dir / "out" / "evaluation" / "grid.png"));
  const auto card = read_text(dir / "out" / "README.md");
  EXPECT_NE(card.find("## Evaluation"), std::string::npos);
  EXPECT_NE(card.find("![evaluation grid](evaluation/grid.png)"), std::string::npos);
  auto bad =
      run_dreamlora({"evaluate", "--model", (dir / "tiny-sd").string(), "--lora", (dir / "none").string()});
  EXPECT_EQ(bad.exit_status, 1);
  EXPECT_NE(bad.output.find("--lora"), std::string::npos) << bad.output;
  fs::remove_all(dir);
}

}  // namespace learning_test
