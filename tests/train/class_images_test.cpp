#include "dreamlora/train/class_images.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/io/image.h"
#include "dreamlora/io/image_tensor.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora;
using namespace dreamlora::train;

namespace {

TrainConfig class_image_config(const fs::path& dir, int64_t count, int64_t batch) {
  TrainConfig c;
  c.class_image_path = dir.string();
  c.class_prompt = "a photo of a toy";
  c.num_class_images = count;
  c.sample_batch_size = batch;
  c.validation_inference_steps = 3;
  c.resolution = 32;
  return c;
}

torch::Tensor pixels_of(const fs::path& file) {
  return io::image_to_tensor(io::load_image(file));
}

}  // namespace

TEST(ClassImages, GeneratedInSampleBatchSizeBatchesEqualOneByOne) {
  auto root = dreamlora::testing::make_temp_dir("class-images");
  synth::write_tiny_model(root / "model", {});
  auto model = pipeline::ModelBundle::load((root / "model").string(), {});
  EXPECT_EQ(ensure_class_images(model, class_image_config(root / "one", 5, 1)), 5);
  EXPECT_EQ(ensure_class_images(model, class_image_config(root / "batched", 5, 3)), 5);
  for (int i = 0; i < 5; ++i) {
    const auto name = "class-" + std::to_string(i) + ".png";
    // 8-bit PNGs of the same image: batched kernels may round differently by at most a level or two.
    EXPECT_LE(
        dreamlora::testing::max_abs_diff(pixels_of(root / "batched" / name), pixels_of(root / "one" / name)),
        3.0 / 255)
        << name;
  }
  // A second call finds every image present and generates none.
  EXPECT_EQ(ensure_class_images(model, class_image_config(root / "batched", 5, 3)), 0);
  fs::remove_all(root);
}

TEST(ClassImages, WorkersSplitTheMissingImagesByIndex) {
  auto root = dreamlora::testing::make_temp_dir("class-images-split");
  synth::write_tiny_model(root / "model", {});
  auto model = pipeline::ModelBundle::load((root / "model").string(), {});
  auto cfg = class_image_config(root / "split", 5, 2);
  EXPECT_EQ(ensure_class_images(model, cfg, /*rank=*/1, /*world_size=*/2), 2);  // images 1 and 3
  EXPECT_TRUE(fs::exists(root / "split" / "class-1.png"));
  EXPECT_TRUE(fs::exists(root / "split" / "class-3.png"));
  EXPECT_FALSE(fs::exists(root / "split" / "class-0.png"));
  EXPECT_EQ(ensure_class_images(model, cfg, /*rank=*/0, /*world_size=*/2), 3);  // images 0, 2 and 4
  fs::remove_all(root);
}
