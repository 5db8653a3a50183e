// Aspect-ratio buckets as kohya's sd-scripts make and choose them (reference values from its
// make_bucket_resolutions / BucketManager.select_bucket formulas), the bucketed data order (batches
// within one bucket, a pure function of the seed and samples consumed), and the images' resize, crop
// and SDXL time ids.
#include "dreamlora/train/buckets.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/synth/tiny_model.h"
#include "dreamlora/train/data_order.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/train_config.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora;
using namespace dreamlora::train;
using namespace dreamlora::io;
using namespace dreamlora::pipeline;
using namespace dreamlora::synth;

namespace {

std::vector<std::pair<int64_t, int64_t>> as_pairs(const std::vector<BucketSize>& buckets) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& b : buckets) out.emplace_back(b.width, b.height);
  return out;
}

void write_gradient_image(const fs::path& path, int width, int height) {
  Image img{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        img.rgb[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>((x * 7 + y * 3 + c * 50) % 256);
  save_png(path, img);
}

}  // namespace

TEST(Buckets, KohyasBucketListFor512) {
  BucketOptions o;  // resolution 512, 256..1024, step 64
  const std::vector<std::pair<int64_t, int64_t>> kohya{
      {256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704}, {320, 768},
      {384, 640}, {448, 576}, {512, 512}, {576, 448},  {640, 384}, {704, 320},
      {768, 320}, {832, 256}, {896, 256}, {960, 256},  {1024, 256}};
  EXPECT_EQ(as_pairs(make_bucket_resolutions(o)), kohya);
}

TEST(Buckets, NearestAspectRatioAndCoveringSizeAsKohya) {
  const auto buckets = make_bucket_resolutions(BucketOptions{});
  struct Case {
    int64_t w, h, bw, bh, rw, rh;
  };
  for (const auto& c : std::vector<Case>{{1000, 500, 704, 320, 704, 352},
                                         {600, 800, 448, 576, 448, 597},
                                         {512, 512, 512, 512, 512, 512},
                                         {333, 1000, 256, 832, 277, 832},
                                         {4032, 3024, 576, 448, 597, 448}}) {
    auto choice = select_bucket(buckets, c.w, c.h);
    EXPECT_EQ(buckets[choice.bucket].width, c.bw) << c.w << "x" << c.h;
    EXPECT_EQ(buckets[choice.bucket].height, c.bh) << c.w << "x" << c.h;
    EXPECT_EQ(choice.resized_width, c.rw) << c.w << "x" << c.h;
    EXPECT_EQ(choice.resized_height, c.rh) << c.w << "x" << c.h;
  }
}

TEST(Buckets, BadBucketFlagsNameTheFlag) {
  TrainConfig c;
  c.model = "m";
  c.image_path = "i";
  c.prompt = "p";
  c.enable_bucket = true;
  c.bucket_reso_steps = 12;
  EXPECT_THROW(c.validate(), Error);
  c.bucket_reso_steps = 64;
  c.max_bucket_reso = 256;
  try {
    c.validate();
    FAIL() << "--resolution 512 above --max-bucket-reso 256 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--max-bucket-reso"), std::string::npos) << e.what();
  }
  c.max_bucket_reso = 1024;
  c.prior_preservation = true;
  c.class_prompt = "a dog";
  c.class_image_path = "c";
  EXPECT_THROW(c.validate(), Error);
}

TEST(BucketedDataOrder, EveryAlignedBatchComesFromOneBucketAndEveryItemIsVisited) {
  const std::vector<int64_t> bucket_of{0, 1, 0, 2, 1, 0, 0, 2, 1};  // 4, 3 and 2 items
  for (int64_t batch : {1, 2, 3}) {
    DataOrder order(5, bucket_of, batch);
    // ceil(4/b) + ceil(3/b) + ceil(2/b) batches of b
    const int64_t expected =
        ((4 + batch - 1) / batch + (3 + batch - 1) / batch + (2 + batch - 1) / batch) * batch;
    EXPECT_EQ(order.epoch_length(), expected);
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      std::set<int64_t> seen;
      for (int64_t start = epoch * expected; start < (epoch + 1) * expected; start += batch) {
        const int64_t bucket = bucket_of[order.item(start)];
        for (int64_t j = 0; j < batch; ++j) {
          EXPECT_EQ(bucket_of[order.item(start + j)], bucket) << "batch at " << start << " mixes buckets";
          seen.insert(order.item(start + j));
        }
      }
      EXPECT_EQ(seen.size(), bucket_of.size()) << "epoch " << epoch << " batch " << batch;
      EXPECT_EQ(order.epoch_of(epoch * expected), epoch);
    }
  }
}

TEST(BucketedDataOrder, PureFunctionOfSeedAndSamplesConsumed) {
  const std::vector<int64_t> bucket_of{0, 1, 0, 2, 1, 0, 0, 2, 1};
  DataOrder a(3, bucket_of, 2), b(3, bucket_of, 2), c(4, bucket_of, 2);
  std::vector<int64_t> forward, backward(40), other;
  for (int64_t n = 0; n < 40; ++n) forward.push_back(a.item(n));
  for (int64_t n = 39; n >= 0; --n) backward[n] = b.item(n);
  for (int64_t n = 0; n < 40; ++n) other.push_back(c.item(n));
  EXPECT_EQ(forward, backward);
  EXPECT_NE(forward, other);
}

TEST(BucketedImageSet, LatentsHaveTheBucketShapeAndTimeIdsTheRealResizeAndCrop) {
  auto root = dreamlora::testing::make_temp_dir("bucket-set");
  write_tiny_model(root / "model", {true, 0});
  write_gradient_image(root / "wide.png", 60, 40);
  write_gradient_image(root / "tall.png", 40, 60);
  write_gradient_image(root / "square.png", 40, 40);
  auto model = ModelBundle::load((root / "model").string(), {});
  DatasetOptions o;
  o.resolution = 32;
  o.center_crop = true;
  o.buckets = {true, 32, 16, 64, 8};
  ImageSet set(list_training_images(root, "p", "--image-path"), o);  // sorted: square, tall, wide
  EXPECT_EQ(bucket_summary(set), "3 images in 3 buckets: 24x40 (1) 32x32 (1) 40x24 (1)");
  std::vector<at::Generator> gens{at::detail::createCPUGenerator(1), at::detail::createCPUGenerator(2),
                                  at::detail::createCPUGenerator(3)};
  for (int64_t i = 0; i < 3; ++i) {
    auto ex = set.example(i, model, gens[i]);
    const auto target = set.target_size(i);
    const int64_t latent_h = ex.latent_mean.size(1), latent_w = ex.latent_mean.size(2);
    EXPECT_EQ(latent_w * target.height, latent_h * target.width) << "image " << i;
    // kohya: 60x40 -> bucket 40x24, resized to 40x27, center crop top (27 - 24) / 2 rounded = 2
    torch::Tensor t = ex.time_ids;
    if (i == 2) {
      EXPECT_EQ(target.width, 40);
      EXPECT_EQ(target.height, 24);
      std::vector<float> expected{40, 60, 2, 0, 24, 40};
      for (int k = 0; k < 6; ++k) EXPECT_EQ(t[k].item<float>(), expected[k]) << "time id " << k;
    }
    if (i == 1) {
      std::vector<float> expected{60, 40, 0, 2, 40, 24};
      for (int k = 0; k < 6; ++k) EXPECT_EQ(t[k].item<float>(), expected[k]) << "time id " << k;
    }
  }
}
