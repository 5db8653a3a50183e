// --cache-latents-to-disk: entries written by one ImageSet are loaded by the next without a VAE pass and
// equal what encoding gives; an entry made from another image, with other metadata or with damaged
// bytes is never used: it is encoded again and rewritten.
#include "dreamlora/train/latent_disk_cache.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "dreamlora/io/image.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/synth/tiny_model.h"
#include "dreamlora/train/dataset.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;
namespace fs = std::filesystem;

namespace {

void write_latent_cache_test_image(const fs::path& path, int shade) {
  io::Image img{16, 16, std::vector<uint8_t>(16 * 16 * 3)};
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>((i * 7 + shade * 50) % 256);
  io::save_png(path, img);
}

struct LatentCacheWorld {
  fs::path root;
  pipeline::ModelBundle model;
  std::vector<TrainingImage> files;
  DatasetOptions options;
};

LatentCacheWorld make_latent_cache_world(const std::string& tag) {
  LatentCacheWorld w;
  w.root = dreamlora::testing::make_temp_dir(tag);
  synth::write_tiny_model(w.root / "model", {});
  fs::create_directories(w.root / "images");
  for (int i = 0; i < 3; ++i)
    write_latent_cache_test_image(w.root / "images" / ("img" + std::to_string(i) + ".png"), i);
  w.model = pipeline::ModelBundle::load(w.root / "model", {});
  w.files = list_training_images(w.root / "images", "p", "--image-path");
  w.options.resolution = 16;
  w.options.random_flip = true;
  return w;
}

const std::map<std::string, std::string> kContext = {{"vae", "test-vae"}, {"vae_dtype", "F32"}};

// The latents of every (file, flip) of a cached set equal those of a set that encodes on first use.
void expect_latents_equal_encoded(LatentCacheWorld& w, ImageSet& cached) {
  ImageSet lazy(w.files, w.options);
  for (int64_t i = 0; i < lazy.size(); ++i)
    for (int draw = 0; draw < 4; ++draw) {  // enough draws to see both flips
      auto gen_a = at::detail::createCPUGenerator(11 + draw),
           gen_b = at::detail::createCPUGenerator(11 + draw);
      auto a = cached.example(i, w.model, gen_a), b = lazy.example(i, w.model, gen_b);
      EXPECT_TRUE(torch::equal(a.latent_mean, b.latent_mean)) << i;
      EXPECT_TRUE(torch::equal(a.latent_std, b.latent_std)) << i;
    }
}

// The cache file of (image file name, flip), found by its metadata.
fs::path entry_file(const fs::path& dir, const std::string& image_name, bool flip) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto meta = io::safetensors::File::open(e.path()).metadata();
    if (fs::path(meta.at("image")).filename() == image_name && meta.at("flip") == (flip ? "true" : "false"))
      return e.path();
  }
  ADD_FAILURE() << "no cache entry for " << image_name;
  return {};
}

LatentCacheCounts cache_set(LatentCacheWorld& w, const fs::path& dir, ImageSet& set,
                            const std::map<std::string, std::string>& context = kContext,
                            std::vector<std::string>* rejections = nullptr) {
  LatentDiskCache cache(dir, context, "instance", true);
  set.cache_all_latents(w.model, &cache);
  if (rejections) *rejections = cache.problems();
  return cache.counts();
}

bool mentions(const std::vector<std::string>& lines, const std::string& text) {
  for (const auto& l : lines)
    if (l.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(LatentDiskCache, WrittenEntriesAreLoadedByTheNextRunWithoutEncodingAndEqualEncodedLatents) {
  auto w = make_latent_cache_world("latent-disk-cache");
  const auto dir = w.root / "out" / kLatentCacheDirName;
  fs::create_directories(dir);
  ImageSet first(w.files, w.options);
  auto counts = cache_set(w, dir, first);
  EXPECT_EQ(counts.encoded, 6);  // 3 files x 2 flips
  EXPECT_EQ(counts.reused, 0);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 6);
  const auto meta = io::safetensors::File::open(entry_file(dir, "img1.png", true)).metadata();
  for (const char* key : {"image_xxh3", "target_width", "target_height", "bucket", "crop_top", "crop_left",
                          "center_crop", "resolution", "vae", "vae_dtype", "format_version", "tensors_xxh3"})
    EXPECT_TRUE(meta.count(key)) << key;

  ImageSet second(w.files, w.options);
  counts = cache_set(w, dir, second);
  EXPECT_EQ(counts.reused, 6);
  EXPECT_EQ(counts.encoded + counts.rewritten, 0);
  expect_latents_equal_encoded(w, second);
  fs::remove_all(w.root);
}

TEST(LatentDiskCache, AChangedImageAndDamagedOrTruncatedFilesAreEncodedAgainNeverUsed) {
  auto w = make_latent_cache_world("latent-disk-cache-stale");
  const auto dir = w.root / "out" / kLatentCacheDirName;
  fs::create_directories(dir);
  ImageSet first(w.files, w.options);
  cache_set(w, dir, first);

  write_latent_cache_test_image(w.root / "images" / "img0.png", 9);  // new content, same name
  {
    const auto damaged = entry_file(dir, "img1.png", false);  // a flipped bit in the tensor data
    std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    const char byte = static_cast<char>(f.get() ^ 0xff);
    f.seekp(-3, std::ios::end);
    f.put(byte);
  }
  const auto truncated = entry_file(dir, "img2.png", true);
  fs::resize_file(truncated, fs::file_size(truncated) / 2);

  ImageSet second(w.files, w.options);
  std::vector<std::string> rejections;
  auto counts = cache_set(w, dir, second, kContext, &rejections);
  EXPECT_EQ(counts.reused, 2);     // img1 flipped, img2 unflipped
  EXPECT_EQ(counts.rewritten, 4);  // img0 twice, the damaged and the truncated entry
  EXPECT_EQ(counts.encoded, 0);
  EXPECT_TRUE(mentions(rejections, "image_xxh3")) << ::testing::PrintToString(rejections);
  EXPECT_TRUE(mentions(rejections, "checksum")) << ::testing::PrintToString(rejections);
  expect_latents_equal_encoded(w, second);

  ImageSet third(w.files, w.options);  // the rewritten entries are good again
  EXPECT_EQ(cache_set(w, dir, third).reused, 6);
  fs::remove_all(w.root);
}

TEST(LatentDiskCache, AnotherVaeOrDtypeRewritesEveryEntry) {
  auto w = make_latent_cache_world("latent-disk-cache-vae");
  const auto dir = w.root / "out" / kLatentCacheDirName;
  fs::create_directories(dir);
  ImageSet first(w.files, w.options);
  cache_set(w, dir, first);
  auto other = kContext;
  other["vae_dtype"] = "BF16";
  ImageSet second(w.files, w.options);
  std::vector<std::string> rejections;
  auto counts = cache_set(w, dir, second, other, &rejections);
  EXPECT_EQ(counts.reused, 0);
  EXPECT_EQ(counts.rewritten, 6);
  EXPECT_TRUE(mentions(rejections, "vae_dtype: cache F32, now BF16")) << ::testing::PrintToString(rejections);
  fs::remove_all(w.root);
}

TEST(LatentDiskCache, TheContextNamesTheVaeByContentWithItsDtypeAndDevice) {
  auto w = make_latent_cache_world("latent-disk-cache-context");
  TrainConfig config;
  config.model = (w.root / "model").string();
  const auto context = latent_cache_context(config, w.model);
  EXPECT_NE(context.at("vae").find("config.json="), std::string::npos) << context.at("vae");
  EXPECT_NE(context.at("vae").find(".safetensors="), std::string::npos) << context.at("vae");
  EXPECT_EQ(context.at("vae_dtype"), "F32");
  EXPECT_EQ(context.at("vae_device"), "cpu");
  synth::write_tiny_model(w.root / "other", {});
  fs::remove_all(w.root / "model" / "vae");
  fs::copy(w.root / "other" / "vae", w.root / "model" / "vae");
  {  // another VAE of the same shape: same config, other weights
    auto weights =
        io::safetensors::File::open(w.root / "model" / "vae" / "diffusion_pytorch_model.safetensors")
            .load_all();
    for (auto& [name, t] : weights) t = t.clone().add_(0.5);
    io::safetensors::save(w.root / "model" / "vae" / "diffusion_pytorch_model.safetensors", weights);
  }
  EXPECT_NE(latent_cache_context(config, w.model).at("vae"), context.at("vae"));
  fs::remove_all(w.root);
}

TEST(LatentDiskCache, AFailedWriteOrAWorkerThatDoesNotWriteLeavesTheLatentsAsEncoded) {
  auto w = make_latent_cache_world("latent-disk-cache-unwritten");
  LatentDiskCache missing_dir(w.root / "no" / "such" / "dir", kContext, "instance", true);
  ImageSet first(w.files, w.options);
  first.cache_all_latents(w.model, &missing_dir);  // every write fails: the run goes on
  EXPECT_EQ(missing_dir.counts().unwritten, 6);
  EXPECT_TRUE(mentions(missing_dir.problems(), "not written"))
      << ::testing::PrintToString(missing_dir.problems());
  expect_latents_equal_encoded(w, first);

  const auto dir = w.root / "out" / kLatentCacheDirName;
  fs::create_directories(dir);
  LatentDiskCache reader(dir, kContext, "instance", false);
  ImageSet second(w.files, w.options);
  second.cache_all_latents(w.model, &reader);
  EXPECT_EQ(reader.counts().unwritten, 6);
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(w.root);
}
