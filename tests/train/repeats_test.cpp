// --repeats: a repeated set holds each file's decoded pixels and latents once, and index i is the file the
// listing repeated `repeats` times had at i (so the data order and every output stay what they were).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/synth/tiny_model.h"
#include "dreamlora/train/dataset.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;
namespace fs = std::filesystem;

namespace {

void write_repeats_test_image(const fs::path& path, int shade) {
  io::Image img{16, 16, std::vector<uint8_t>(16 * 16 * 3)};
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>((i * 13 + shade * 70) % 256);
  io::save_png(path, img);
  std::ofstream(fs::path(path).replace_extension(".txt")) << "caption of " << path.stem().string();
}

}  // namespace

TEST(Repeats, EachFileIsDecodedAndEncodedOnceAndIndexIIsTheRepeatedListingsFile) {
  auto root = dreamlora::testing::make_temp_dir("repeats");
  synth::write_tiny_model(root / "model", {});
  fs::create_directories(root / "images");
  for (int i = 0; i < 3; ++i)
    write_repeats_test_image(root / "images" / ("img" + std::to_string(i) + ".png"), i);
  auto model = pipeline::ModelBundle::load(root / "model", {});
  const auto files = list_training_images(root / "images", "p", "--image-path");
  std::vector<TrainingImage> listing;  // what --repeats 3 was before: the files listed three times
  for (int r = 0; r < 3; ++r) listing.insert(listing.end(), files.begin(), files.end());
  DatasetOptions o;
  o.resolution = 16;
  o.random_flip = true;
  ImageSet set(files, o, 3);
  EXPECT_EQ(set.size(), 9);
  EXPECT_EQ(set.file_count(), 3);
  EXPECT_EQ(set.decoded_count(), 3);  // not 9
  EXPECT_EQ(set.bucket_ids().size(), 9u);
  ImageSet old_style(listing, o);
  for (int64_t i = 0; i < 9; ++i) {
    auto gen_a = at::detail::createCPUGenerator(100 + i), gen_b = at::detail::createCPUGenerator(100 + i);
    auto a = set.example(i, model, gen_a), b = old_style.example(i, model, gen_b);
    EXPECT_EQ(a.caption, listing[i].caption) << i;
    EXPECT_TRUE(torch::equal(a.latent_mean, b.latent_mean)) << i;
    EXPECT_TRUE(torch::equal(a.latent_std, b.latent_std)) << i;
  }
  EXPECT_EQ(set.decoded_count(), 3);
  EXPECT_LE(set.cached_latent_count(), 6);  // (file, flip) pairs, whatever the repeats
  EXPECT_GT(old_style.cached_latent_count(), set.cached_latent_count());
  fs::remove_all(root);
}

TEST(CacheLatents, CachedUpFrontEqualsEncodedOnFirstUseAndThePixelsAreReleased) {
  auto root = dreamlora::testing::make_temp_dir("cache-latents");
  synth::write_tiny_model(root / "model", {});
  fs::create_directories(root / "images");
  for (int i = 0; i < 2; ++i)
    write_repeats_test_image(root / "images" / ("img" + std::to_string(i) + ".png"), i);
  auto model = pipeline::ModelBundle::load(root / "model", {});
  const auto files = list_training_images(root / "images", "p", "--image-path");
  DatasetOptions o;
  o.resolution = 16;
  o.random_flip = true;
  ImageSet cached(files, o, 2), lazy(files, o, 2);
  cached.cache_all_latents(model);
  EXPECT_EQ(cached.cached_latent_count(), 4);  // 2 files x 2 flips
  for (int64_t i = 0; i < 4; ++i) {
    auto gen_a = at::detail::createCPUGenerator(7 + i), gen_b = at::detail::createCPUGenerator(7 + i);
    auto a = cached.example(i, model, gen_a), b = lazy.example(i, model, gen_b);
    EXPECT_TRUE(torch::equal(a.latent_mean, b.latent_mean)) << i;
    EXPECT_TRUE(torch::equal(a.latent_std, b.latent_std)) << i;
    EXPECT_TRUE(torch::equal(a.time_ids, b.time_ids)) << i;
    // The generators advanced alike: the next draws of a step (noise, timesteps) are unchanged.
    EXPECT_EQ(torch::randint(0, 1000000, {1}, gen_a).item<int64_t>(),
              torch::randint(0, 1000000, {1}, gen_b).item<int64_t>());
  }
  EXPECT_EQ(cached.cached_latent_count(), 4);
  fs::remove_all(root);
}

TEST(CacheLatents, ARandomCropIsRefusedNamingCenterCrop) {
  auto root = dreamlora::testing::make_temp_dir("cache-latents-crop");
  synth::write_tiny_model(root / "model", {});
  fs::create_directories(root / "images");
  write_repeats_test_image(root / "images" / "img.png", 0);  // 16x16
  auto model = pipeline::ModelBundle::load(root / "model", {});
  DatasetOptions o;
  o.resolution = 8;  // 16x16 resized to 8x8: no crop at all
  ImageSet fits(list_training_images(root / "images", "p", "--image-path"), o);
  EXPECT_NO_THROW(fits.cache_all_latents(model));
  io::Image wide{24, 16, std::vector<uint8_t>(24 * 16 * 3, 90)};
  io::save_png(root / "images" / "img.png", wide);  // 12x8 after resizing: a random 8x8 crop
  ImageSet random_crop(list_training_images(root / "images", "p", "--image-path"), o);
  try {
    random_crop.cache_all_latents(model);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--center-crop"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("img.png"), std::string::npos) << e.what();
  }
  o.center_crop = true;
  ImageSet centered(list_training_images(root / "images", "p", "--image-path"), o);
  EXPECT_NO_THROW(centered.cache_all_latents(model));
  fs::remove_all(root);
}
