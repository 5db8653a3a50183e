// dreamlora against today's diffusers, peft and TensorBoard (ctest label interop): each test runs one
// subcommand of tests/interop/interop.py with the Python of build/pyenv-interop (created by
// scripts/install-python-clients.sh from requirements-interop.txt). Without that environment the tests
// skip with a message, except under CI=true, where that is a failure.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "test_util.h"

namespace dreamlora {
namespace {

namespace fs = std::filesystem;
using ::dreamlora::testing::dreamlora_binary;
using ::dreamlora::testing::fixtures_dir;
using ::dreamlora::testing::make_temp_dir;
using ::dreamlora::testing::running_in_ci;

// $DREAMLORA_INTEROP_PYENV, else <source>/build/pyenv-interop; empty when it has no python.
fs::path interop_python() {
  fs::path venv = fs::path(DREAMLORA_SOURCE_DIR) / "build" / "pyenv-interop";
  if (const char* env = std::getenv("DREAMLORA_INTEROP_PYENV"); env && *env) venv = env;
  const fs::path python = venv / "bin" / "python";
  return ::access(python.c_str(), X_OK) == 0 && fs::exists(venv / ".requirements-interop.txt") ? python
                                                                                               : fs::path();
}

// diffusers' examples/dreambooth/train_dreambooth_lora.py is not part of the diffusers wheel and is not
// committed here: $DREAMLORA_DIFFUSERS_EXAMPLES or <source>/build/diffusers-examples holds it.
fs::path diffusers_training_script() {
  fs::path dir = fs::path(DREAMLORA_SOURCE_DIR) / "build" / "diffusers-examples";
  if (const char* env = std::getenv("DREAMLORA_DIFFUSERS_EXAMPLES"); env && *env) dir = env;
  const fs::path script = dir / "train_dreambooth_lora.py";
  return fs::exists(script) ? script : fs::path();
}

#define REQUIRE_INTEROP_ENV(python)                                                                       \
  REQUIRE_FIXTURES();                                                                                     \
  const fs::path python = interop_python();                                                               \
  do {                                                                                                    \
    if (python.empty()) {                                                                                 \
      if (running_in_ci())                                                                                \
        FAIL() << "build/pyenv-interop missing under CI (scripts/install-python-clients.sh)";             \
      GTEST_SKIP() << "no interop Python environment in build/pyenv-interop or $DREAMLORA_INTEROP_PYENV " \
                      "(scripts/install-python-clients.sh); interop test skipped";                        \
    }                                                                                                     \
  } while (0)

struct ScriptResult {
  int status = -1;
  std::string output;
};

ScriptResult run_interop(const fs::path& python, const std::string& args) {
  const fs::path work = make_temp_dir("interop");
  const std::string cmd = "HF_HUB_OFFLINE=1 " + python.string() + " " + DREAMLORA_SOURCE_DIR +
                          "/tests/interop/interop.py " + args + " --dreamlora " +
                          dreamlora_binary().string() + " --work " + work.string() + " 2>&1";
  ScriptResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  r.status = ::pclose(pipe);
  // The figures (max abs differences) go to the test log either way.
  for (size_t at = r.output.find("interop-result "); at != std::string::npos;
       at = r.output.find("interop-result ", at + 1))
    std::cout << "[ interop ] " << r.output.substr(at, r.output.find('\n', at) - at) << std::endl;
  if (r.status == 0) fs::remove_all(work);
  return r;
}

std::string model(const char* name) {
  return (fixtures_dir() / name).string();
}

TEST(DiffusersInterop, LoadsDreamloraUnetLoraInBothFormatsWithEqualOutputsSD1) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "load --arch sd --model " + model("tiny-sd"));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(DiffusersInterop, LoadsDreamloraTextEncoderLoraWithEqualOutputsSD1) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "load --arch sd --text-encoder --model " + model("tiny-sd"));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(DiffusersInterop, LoadsDreamloraLoraWithBothTextEncodersWithEqualOutputsSDXL) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "load --arch sdxl --text-encoder --model " + model("tiny-sdxl"));
  EXPECT_EQ(r.status, 0) << r.output;
}

// With diffusers' example script in build/diffusers-examples the LoRA comes from it; without it (CI: the
// script is not in the wheel and may not be committed) from tests/interop/train_lora_like_diffusers.py, which
// makes the same diffusers/peft calls and saves the same way. The output says which one trained it.
TEST(DiffusersInterop, DreamloraRunsALoraTrainedWithDiffusersAndItsPeftStateDictSD1) {
  REQUIRE_INTEROP_ENV(python);
  const fs::path script = diffusers_training_script();
  std::cout << "[ interop ] trained by "
            << (script.empty() ? "tests/interop/train_lora_like_diffusers.py (no example script in "
                                 "build/diffusers-examples or $DREAMLORA_DIFFUSERS_EXAMPLES)"
                               : script.string())
            << std::endl;
  const std::string with_script = script.empty() ? "" : " --diffusers-script " + script.string();
  auto r = run_interop(python, "reverse --arch sd --model " + model("tiny-sd") + with_script);
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(DiffusersInterop, DreamloraRunsALoraTrainedWithDiffusersAndItsPeftStateDictSDXL) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "reverse --arch sdxl --model " + model("tiny-sdxl"));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(DiffusersInterop, DreamloraRunsPeftStateDictsTakenFromDiffusersSDXL) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "reverse --trainer dreamlora --arch sdxl --model " + model("tiny-sdxl"));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(TensorBoardInterop, SigtermAndResumeReadBackAsOneContinuousCurve) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "tensorboard --model " + model("tiny-sd"));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(TensorBoardInterop, SigkillAfterACheckpointAndResumeLogEachStepOnceAndALiveReaderPurgesTheOrphans) {
  REQUIRE_INTEROP_ENV(python);
  auto r = run_interop(python, "tensorboard --kill --model " + model("tiny-sd"));
  EXPECT_EQ(r.status, 0) << r.output;
}

}  // namespace
}  // namespace dreamlora
