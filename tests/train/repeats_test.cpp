// --repeats: a repeated set holds each file's decoded pixels and latents once, and index i is the file the
// listing repeated `repeats` times had at i (so the data order and every output stay what they were).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

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
