// `dreamlora train --cache-latents-to-disk` end to end: the cache is written under the output folder and
// the LoRA equals an uncached run's to the byte; a run interrupted (status 75) and resumed reuses every
// entry; a changed image and a damaged entry are encoded again, and the result is still the uncached
// one. The cache folder is neither a checkpoint nor counted by --checkpoints-total-limit.
#include <filesystem>
#include <fstream>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/image.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct DiskCacheWorld {
  fs::path root, model, images;
};
const DiskCacheWorld& disk_cache_world() {
  static DiskCacheWorld w = [] {
    DiskCacheWorld w;
    w.root = make_temp_dir("latent-cache-world");
    w.model = w.root / "tiny-sd";
    w.images = w.root / "subject";
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    return w;
  }();
  return w;
}

std::vector<std::string> disk_cache_args(const fs::path& images, const fs::path& out, int steps,
                                         const std::vector<std::string>& extra) {
  std::vector<std::string> args{"--threads",
                                "2",
                                "train",
                                "--model",
                                disk_cache_world().model.string(),
                                "--image-path",
                                images.string(),
                                "--prompt",
                                "a photo of sks toy",
                                "--resolution",
                                "32",
                                "--center-crop",
                                "--num-steps",
                                std::to_string(steps),
                                "--checkpointing-steps",
                                "2",
                                "--lr",
                                "1e-3",
                                "--random-flip",
                                "--output-dir",
                                out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

const char kLora[] = "pytorch_lora_weights.safetensors";

// The LoRA of an uncached 6-step run on the shared images (made once).
const std::string& uncached_lora() {
  static std::string bytes = [] {
    auto out = make_temp_dir("latent-cache-uncached");
    auto r = run_dreamlora(disk_cache_args(disk_cache_world().images, out, 6, {}));
    EXPECT_EQ(r.exit_status, 0) << r.output;
    return read_text(out / kLora);
  }();
  return bytes;
}

int64_t files_in(const fs::path& dir) {
  return std::distance(fs::directory_iterator(dir), fs::directory_iterator());
}

fs::path disk_cache_entry(const fs::path& dir, const std::string& image_name, bool flip) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto meta = dreamlora::io::safetensors::File::open(e.path()).metadata();
    if (fs::path(meta.at("image")).filename() == image_name && meta.at("flip") == (flip ? "true" : "false"))
      return e.path();
  }
  ADD_FAILURE() << "no cache entry for " << image_name;
  return {};
}

}  // namespace

TEST(CacheLatentsToDisk, WritesTheCacheAndTheLoraEqualsAnUncachedRunsByteForByte) {
  auto out = make_temp_dir("disk-cache-fresh");  // not "latent-cache": inspect prints the path
  auto r = run_dreamlora(disk_cache_args(disk_cache_world().images, out, 6,
                                         {"--cache-latents-to-disk", "--checkpoints-total-limit", "1"}));
  ASSERT_EQ(r.exit_status, 0) << r.output;
  EXPECT_NE(r.output.find("0 reused, 6 encoded, 0 rewritten"), std::string::npos) << r.output;
  EXPECT_EQ(files_in(out / "latent-cache"), 6);  // 3 images x 2 flips
  EXPECT_EQ(read_text(out / kLora), uncached_lora());
  // The cache is not a checkpoint: the limit keeps one checkpoint and leaves the cache alone.
  int checkpoints = 0;
  for (const auto& e : fs::directory_iterator(out))
    checkpoints += dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string()).has_value();
  EXPECT_EQ(checkpoints, 1);
  auto inspect = run_dreamlora({"inspect", out.string()});
  EXPECT_EQ(inspect.exit_status, 0) << inspect.output;
  EXPECT_EQ(inspect.output.find("latent-cache"), std::string::npos) << inspect.output;
}

TEST(CacheLatentsToDisk, AnInterruptedRunResumesFromTheCacheWithoutEncodingAndEndsByteIdentical) {
  auto out = make_temp_dir("latent-cache-resume");
  const auto args = disk_cache_args(disk_cache_world().images, out, 6, {"--cache_latents_to_disk"});
  auto first = run_dreamlora(args, {"DREAMLORA_TEST_STOP_AT_STEP=3"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  EXPECT_NE(first.output.find("0 reused, 6 encoded, 0 rewritten"), std::string::npos) << first.output;
  auto second = run_dreamlora(args);
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("6 reused, 0 encoded, 0 rewritten"), std::string::npos) << second.output;
  EXPECT_EQ(read_text(out / kLora), uncached_lora());
}

TEST(CacheLatentsToDisk, AChangedImageAndADamagedEntryAreEncodedAgainAndTheResultIsTheUncachedOne) {
  auto root = make_temp_dir("latent-cache-stale");
  const auto images = root / "images";
  fs::copy(disk_cache_world().images, images);
  const auto first_out = root / "first";
  ASSERT_EQ(run_dreamlora(disk_cache_args(images, first_out, 2, {"--cache-latents-to-disk"})).exit_status, 0);

  // Another picture under the first image's name, and one entry cut short.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(images))
    if (e.path().extension() == ".png") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  auto picture = dreamlora::io::load_image(files[0]);
  for (auto& v : picture.rgb) v = static_cast<uint8_t>(255 - v);
  dreamlora::io::save_png(files[0], picture);
  const auto cache = first_out / "latent-cache";
  const auto cut = disk_cache_entry(cache, files[1].filename().string(), true);
  fs::resize_file(cut, 100);

  // A new run (fresh output folder) given the old cache, against an uncached run on the changed images.
  const auto cached_out = root / "cached", plain_out = root / "plain";
  fs::create_directories(cached_out);
  fs::copy(cache, cached_out / "latent-cache");
  auto cached = run_dreamlora(disk_cache_args(images, cached_out, 2, {"--cache-latents-to-disk"}));
  ASSERT_EQ(cached.exit_status, 0) << cached.output;
  EXPECT_NE(cached.output.find("3 reused, 0 encoded, 3 rewritten"), std::string::npos) << cached.output;
  EXPECT_NE(cached.output.find("image_xxh3"), std::string::npos) << cached.output;
  EXPECT_NE(cached.output.find("unreadable"), std::string::npos) << cached.output;
  auto plain = run_dreamlora(disk_cache_args(images, plain_out, 2, {}));
  ASSERT_EQ(plain.exit_status, 0) << plain.output;
  EXPECT_EQ(read_text(cached_out / kLora), read_text(plain_out / kLora));
  EXPECT_NE(read_text(cached_out / kLora), read_text(first_out / kLora));  // the change reached the result
  fs::remove_all(root);
}
