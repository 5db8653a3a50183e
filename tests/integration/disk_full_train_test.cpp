// Disk full through a whole `dreamlora train` run: an LD_PRELOAD shim (tests/shims/enospc_shim.cpp) makes
// the writes of one checkpoint, or of the final LoRA file, fail with ENOSPC after part of the file went
// out, as a file system that fills does. The run fails with a message that names the file and the
// cause, every earlier checkpoint stays valid, nothing half-written is left, and a rerun without the
// fault resumes and finishes with the final LoRA written.
#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct DiskFullWorld {
  fs::path model, images;
};
const DiskFullWorld& disk_full_world() {
  static DiskFullWorld w = [] {
    DiskFullWorld w;
    auto root = make_temp_dir("disk-full-world");
    w.model = root / "tiny-sd";
    w.images = root / "subject";
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    return w;
  }();
  return w;
}

std::vector<std::string> six_steps_checkpoint_every_two(const fs::path& out) {
  return {"--threads",
          "2",
          "train",
          "--model",
          disk_full_world().model.string(),
          "--image-path",
          disk_full_world().images.string(),
          "--prompt",
          "a photo of sks toy",
          "--resolution",
          "32",
          "--num-steps",
          "6",
          "--checkpointing-steps",
          "2",
          "--output-dir",
          out.string()};
}

// The environment that fills the disk while a file whose path contains `path_part` is written, after
// `bytes_that_fit` of it went out.
std::vector<std::string> disk_full_while_writing(const std::string& path_part, int bytes_that_fit) {
#ifdef DREAMLORA_ENOSPC_SHIM
  return {std::string("LD_PRELOAD=") + DREAMLORA_ENOSPC_SHIM, "DREAMLORA_ENOSPC_PATH=" + path_part,
          "DREAMLORA_ENOSPC_AFTER=" + std::to_string(bytes_that_fit)};
#else
  (void)path_part, (void)bytes_that_fit;
  return {};
#endif
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Names in `out` that a failed write could have left behind (temporary files and folders).
std::vector<std::string> leftovers(const fs::path& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (has(name, ".tmp") || has(name, ".invalid")) names.push_back(name);
  }
  return names;
}

// `dreamlora inspect` lists exactly these checkpoints, each valid.
void expect_valid_checkpoints(const fs::path& out, const std::vector<int>& steps) {
  const auto inspect = dreamlora::testing::run_dreamlora({"inspect", out.string()});
  for (int step : steps) {
    const std::string name = "checkpoint-" + std::to_string(step);
    EXPECT_TRUE(fs::is_directory(out / name)) << name;
    EXPECT_TRUE(has(inspect.output, name + "  step " + std::to_string(step))) << inspect.output;
  }
  EXPECT_FALSE(has(inspect.output, "INVALID")) << inspect.output;
  int listed = 0;
  for (const auto& e : fs::directory_iterator(out))
    listed += e.path().filename().string().rfind("checkpoint-", 0) == 0;
  EXPECT_EQ(listed, static_cast<int>(steps.size())) << inspect.output;
}

class DiskFullTrain : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef DREAMLORA_ENOSPC_SHIM
    GTEST_SKIP() << "the ENOSPC shim was not built";
#endif
  }
};

TEST_F(DiskFullTrain, ACheckpointThatHitsENOSPCFailsTheRunKeepsEarlierOnesAndARerunFinishes) {
  // The writer's temporary folder for step 4 (".checkpoint-4.tmp-PID"): plain "checkpoint-4" also matched the
  // test's own folder whenever the PID in its name began with 4.
  const auto out = make_temp_dir("disk-full-ckpt");
  auto full = run_dreamlora(six_steps_checkpoint_every_two(out),
                            disk_full_while_writing("/.checkpoint-4.tmp-", 50000));
  EXPECT_EQ(full.exit_status, 1) << full.output;
  EXPECT_TRUE(has(full.output, "checkpoint 4 not written")) << full.output;
  EXPECT_TRUE(has(full.output, "No space left on device (free disk space")) << full.output;
  expect_valid_checkpoints(out, {2});
  EXPECT_EQ(leftovers(out), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(out / "pytorch_lora_weights.safetensors"));

  auto rerun = run_dreamlora(six_steps_checkpoint_every_two(out));
  EXPECT_EQ(rerun.exit_status, 0) << rerun.output;
  EXPECT_TRUE(has(rerun.output, "resumed from " + (out / "checkpoint-2").string() + " at step 2 of 6"))
      << rerun.output;
  EXPECT_TRUE(fs::is_regular_file(out / "pytorch_lora_weights.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out / "pytorch_lora_weights_kohya.safetensors"));
  expect_valid_checkpoints(out, {2, 4, 6});
}

TEST_F(DiskFullTrain, AFinalLoRAThatHitsENOSPCFailsTheRunKeepsEveryCheckpointAndARerunWritesIt) {
  const auto out = make_temp_dir("disk-full-final");
  auto full = run_dreamlora(six_steps_checkpoint_every_two(out),
                            disk_full_while_writing("/.pytorch_lora_weights.safetensors.tmp", 1000));
  EXPECT_EQ(full.exit_status, 1) << full.output;
  EXPECT_TRUE(has(full.output, ".pytorch_lora_weights.safetensors.tmp-")) << full.output;
  EXPECT_TRUE(has(full.output, "write failed: No space left on device (free disk space)")) << full.output;
  expect_valid_checkpoints(out, {2, 4, 6});
  EXPECT_EQ(leftovers(out), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(out / "pytorch_lora_weights.safetensors"));

  auto rerun = run_dreamlora(six_steps_checkpoint_every_two(out));
  EXPECT_EQ(rerun.exit_status, 0) << rerun.output;
  EXPECT_TRUE(has(rerun.output, "resumed from " + (out / "checkpoint-6").string() + " at step 6 of 6"))
      << rerun.output;
  EXPECT_TRUE(fs::is_regular_file(out / "pytorch_lora_weights.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out / "pytorch_lora_weights_kohya.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out / "README.md"));
  expect_valid_checkpoints(out, {2, 4, 6});
}

}  // namespace
