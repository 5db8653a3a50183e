// Nothing lost, ever (end to end on the tiny model): one trainer per output folder, settings checked
// before the first step, a failing validation costs no result, a resume onto other weights or another
// schedule length is refused.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct SafetyWorld {
  fs::path model, other_tune, images;
};
// A tiny model, a second one with the same architecture and other weights, and a subject (made once).
const SafetyWorld& safety_world() {
  static SafetyWorld w = [] {
    SafetyWorld w;
    auto root = make_temp_dir("nothing-lost-world");
    w.model = root / "tiny-sd";
    w.other_tune = root / "tiny-sd-other-tune";
    w.images = root / "subject";
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::TinyModelOptions other;
    other.seed = 7;
    dreamlora::synth::write_tiny_model(w.other_tune, other);
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    return w;
  }();
  return w;
}

std::vector<std::string> safety_args(const fs::path& out, int steps, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--threads",
                                   "2",
                                   "train",
                                   "--model",
                                   safety_world().model.string(),
                                   "--image-path",
                                   safety_world().images.string(),
                                   "--prompt",
                                   "a photo of sks toy",
                                   "--resolution",
                                   "32",
                                   "--num-steps",
                                   std::to_string(steps),
                                   "--checkpointing-steps",
                                   "2",
                                   "--output-dir",
                                   out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST(TrainLock, ASecondTrainerOnTheSameOutputDirExitsAtOnceNamingTheHolder) {
  auto out = make_temp_dir("lock-two-trainers");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  const int pid = spawn_dreamlora(safety_args(out, 100000), log);
  for (int i = 0; i < 600 && !fs::exists(out / "checkpoint-2"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "checkpoint-2")) << read_text(log);

  const auto t0 = std::chrono::steady_clock::now();
  auto second = run_dreamlora(safety_args(out, 100000));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(second.exit_status, 1) << second.output;
  EXPECT_TRUE(contains(second.output, "is in use by another trainer (pid " + std::to_string(pid) + " on "))
      << second.output;
  EXPECT_LT(seconds, 10.0) << "the second trainer must not load the model before giving up";
  auto locked = run_dreamlora({"inspect", out.string()});
  EXPECT_TRUE(contains(locked.output, "locked by a running trainer: pid " + std::to_string(pid)))
      << locked.output;

  // SIGKILL: no stale lock; the next trainer takes the folder and resumes.
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_process(pid), 128 + SIGKILL);
  auto unlocked = run_dreamlora({"inspect", out.string()});
  EXPECT_TRUE(contains(unlocked.output, "not locked")) << unlocked.output;
  auto next = run_dreamlora(safety_args(out, 2));
  EXPECT_EQ(next.exit_status, 0) << next.output;
  EXPECT_TRUE(contains(next.output, "resumed from")) << next.output;
}

TEST(TrainLateFailure, ABadValidationSamplerIsRefusedBeforeTheFirstStep) {
  auto out = make_temp_dir("late-sampler");
  auto r = run_dreamlora(
      safety_args(out, 2, {"--validation-prompt", "a sks toy", "--validation-sampler", "nope"}));
  EXPECT_EQ(r.exit_status, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "--validation-sampler: unknown sampler 'nope'")) << r.output;
  EXPECT_FALSE(fs::exists(out / "checkpoint-2"));
}

// The validation folder cannot be made (a file of that name is in the way): the run still ends with
// its final LoRA files and exit 0, and the failure is a warning in the end summary.
TEST(TrainLateFailure, AFailingValidationIsAWarningAndTheFinalLoRAIsWritten) {
  auto out = make_temp_dir("late-validation");
  std::ofstream(out / "validation") << "not a folder";
  auto r = run_dreamlora(
      safety_args(out, 2, {"--validation-prompt", "a sks toy", "--validation-inference-steps", "2"}));
  EXPECT_EQ(r.exit_status, 0) << r.output;
  EXPECT_TRUE(fs::exists(out / "pytorch_lora_weights.safetensors"));
  EXPECT_TRUE(fs::exists(out / "pytorch_lora_weights_kohya.safetensors"));
  EXPECT_TRUE(fs::exists(out / "README.md"));
  EXPECT_TRUE(contains(r.output, "finished with 1 warning")) << r.output;
  EXPECT_TRUE(contains(r.output, "warning: validation images failed")) << r.output;
}

TEST(TrainResumeFingerprint, AnotherFineTuneOfTheSameArchitectureIsRefused) {
  auto out = make_temp_dir("fp-other-tune");
  ASSERT_EQ(run_dreamlora(safety_args(out, 4), {"DREAMLORA_TEST_STOP_AT_STEP=2"}).exit_status, 75);
  auto args = safety_args(out, 4);
  args[4] = safety_world().other_tune.string();  // --model
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "model-weights.unet/diffusion_pytorch_model.safetensors")) << r.output;
  EXPECT_FALSE(contains(r.output, "model.unet/config.json")) << "same architecture, same configs\n"
                                                             << r.output;
}

TEST(TrainResumeFingerprint, ALongerRunUnderALinearScheduleNeedsAllowScheduleChange) {
  auto out = make_temp_dir("fp-schedule");
  ASSERT_EQ(run_dreamlora(safety_args(out, 4, {"--scheduler", "linear"}), {"DREAMLORA_TEST_STOP_AT_STEP=2"})
                .exit_status,
            75);
  auto refused = run_dreamlora(safety_args(out, 6, {"--scheduler", "linear"}));
  EXPECT_EQ(refused.exit_status, 1) << refused.output;
  EXPECT_TRUE(contains(refused.output, "--num-steps: checkpoint 4, now 6")) << refused.output;
  auto allowed = run_dreamlora(safety_args(out, 6, {"--scheduler", "linear", "--allow-schedule-change"}));
  EXPECT_EQ(allowed.exit_status, 0) << allowed.output;
  EXPECT_TRUE(contains(allowed.output, "resumed from")) << allowed.output;
}
