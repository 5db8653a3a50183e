// `dreamlora train --model file.safetensors --model-config DIR` takes the same LoRA training step, to the
// byte, as training from the diffusers folder the file was converted from (diffusers' own scripts).
#include <filesystem>

#include "dreamlora/synth/demo_data.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

std::vector<std::string> one_step(const fs::path& images, const fs::path& out,
                                  std::vector<std::string> model) {
  std::vector<std::string> args = {"--threads", "2", "train"};
  args.insert(args.end(), model.begin(), model.end());
  const std::vector<std::string> rest = {
      "--image-path", images.string(), "--prompt", "a photo of sks toy", "--resolution",
      "64",           "--num-steps",   "1",        "--output-dir",       out.string()};
  args.insert(args.end(), rest.begin(), rest.end());
  return args;
}

class SingleFileTrain : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(SingleFileTrain, OneLoraStepIsByteIdenticalToTheDiffusersFolder) {
  REQUIRE_FIXTURES();
  const fs::path set = fixtures_dir() / GetParam();
  auto root = make_temp_dir("single-file-train");
  dreamlora::synth::write_demo_subject_images(root / "images", 2, 64, 1);
  auto folder = run_dreamlora(one_step(root / "images", root / "folder", {"--model", set.string()}));
  ASSERT_EQ(folder.exit_status, 0) << folder.output;
  auto file = run_dreamlora(
      one_step(root / "images", root / "file",
               {"--model", (set / "single-file.safetensors").string(), "--model-config", set.string()}));
  ASSERT_EQ(file.exit_status, 0) << file.output;
  EXPECT_EQ(read_text(root / "folder" / "pytorch_lora_weights.safetensors"),
            read_text(root / "file" / "pytorch_lora_weights.safetensors"));
  fs::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SingleFileTrain, ::testing::Values("tiny-sd", "tiny-sdxl"),
                         [](const auto& info) {
                           return info.param == "tiny-sd" ? std::string("sd") : "sdxl";
                         });
