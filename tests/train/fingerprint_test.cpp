// The resume fingerprint: model weights by sampled content, instance and class images and captions
// kept apart, --num-steps under a step-dependent schedule, and checkpoints of older versions.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/train/trainer_state.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;
namespace fs = std::filesystem;

namespace {

void write_bytes(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

TrainConfig fingerprint_config(const fs::path& model) {
  TrainConfig c;
  c.model = model.string();
  c.image_path = "i";
  c.prompt = "a photo of sks dog";
  return c;
}

// Two images named a.png: one instance, one class.
struct ImageSets {
  std::vector<TrainingImage> instance, cls;
};
ImageSets same_named_images(const fs::path& dir, const std::string& instance_bytes,
                            const std::string& caption) {
  write_bytes(dir / "instance" / "a.png", instance_bytes);
  write_bytes(dir / "class" / "a.png", "class image bytes");
  return {{{dir / "instance" / "a.png", caption}}, {{dir / "class" / "a.png", "a photo of dog"}}};
}

std::string joined_lines(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

}  // namespace

TEST(Fingerprint, AnInstanceImageIsNotHiddenByAClassImageOfTheSameName) {
  auto dir = dreamlora::testing::make_temp_dir("fp-names");
  auto c = fingerprint_config(dir / "no-model");
  c.prior_preservation = true;
  auto before = same_named_images(dir, "instance image v1", "a photo of sks dog");
  const io::Json a = make_fingerprint(c, before.instance, before.cls);
  auto after = same_named_images(dir, "instance image v2", "a photo of sks dog");
  const io::Json b = make_fingerprint(c, after.instance, after.cls);
  const auto diffs = fingerprint_differences(a, b);
  ASSERT_EQ(diffs.size(), 1u) << joined_lines(diffs);
  EXPECT_EQ(diffs[0].rfind("instance-data.a.png", 0), 0u) << diffs[0];
}

TEST(Fingerprint, AChangedCaptionFileIsADifference) {
  auto dir = dreamlora::testing::make_temp_dir("fp-caption");
  auto c = fingerprint_config(dir / "no-model");
  auto one = same_named_images(dir, "instance", "a photo of sks dog on a beach");
  auto two = same_named_images(dir, "instance", "a photo of sks dog in snow");
  const auto diffs =
      fingerprint_differences(make_fingerprint(c, one.instance, {}), make_fingerprint(c, two.instance, {}));
  ASSERT_EQ(diffs.size(), 1u) << joined_lines(diffs);
  EXPECT_EQ(diffs[0].rfind("instance-captions.a.png", 0), 0u) << diffs[0];
}

// Same keys, shapes and sizes, other values (as two fine-tunes of one architecture).
TEST(Fingerprint, AnotherFineTuneOfTheSameArchitectureHashesDifferently) {
  auto dir = dreamlora::testing::make_temp_dir("fp-weights");
  auto big = torch::arange(0, 1 << 16, torch::kFloat32);  // 256 KiB: sampled, not read whole
  auto tuned = big.clone();
  tuned[(1 << 15) + 7] += 1;  // inside the middle sample
  write_bytes(dir / "base" / "unet" / "diffusion_pytorch_model.safetensors",
              io::safetensors::serialize({{"w", big}, {"b", torch::ones({3})}}));
  write_bytes(dir / "tuned" / "unet" / "diffusion_pytorch_model.safetensors",
              io::safetensors::serialize({{"w", tuned}, {"b", torch::ones({3})}}));
  EXPECT_NE(weights_sample_hash(dir / "base" / "unet" / "diffusion_pytorch_model.safetensors"),
            weights_sample_hash(dir / "tuned" / "unet" / "diffusion_pytorch_model.safetensors"));
  auto images = same_named_images(dir, "instance", "x");
  const auto diffs =
      fingerprint_differences(make_fingerprint(fingerprint_config(dir / "base"), images.instance, {}),
                              make_fingerprint(fingerprint_config(dir / "tuned"), images.instance, {}));
  ASSERT_EQ(diffs.size(), 1u) << joined_lines(diffs);
  EXPECT_EQ(diffs[0].rfind("model-weights.unet/diffusion_pytorch_model.safetensors", 0), 0u) << diffs[0];
}

// A single-file checkpoint is fingerprinted by its sampled content and by the configs --model-config names,
// under a key of its own (checkpoints of older builds lack it and still resume).
TEST(Fingerprint, ASingleFileCheckpointAndItsModelConfigAreFingerprinted) {
  auto dir = dreamlora::testing::make_temp_dir("fp-single-file");
  auto big = torch::arange(0, 1 << 16, torch::kFloat32);
  auto tuned = big.clone();
  tuned[(1 << 15) + 7] += 1;
  write_bytes(dir / "base.safetensors", io::safetensors::serialize({{"w", big}}));
  write_bytes(dir / "tuned.safetensors", io::safetensors::serialize({{"w", tuned}}));
  write_bytes(dir / "config-a" / "unet" / "config.json", "{\"sample_size\": 64}");
  write_bytes(dir / "config-b" / "unet" / "config.json", "{\"sample_size\": 96}");
  auto images = same_named_images(dir, "instance", "x");
  auto fingerprint = [&](const char* file, const char* config_dir) {
    auto c = fingerprint_config(dir / file);
    c.model_config = (dir / config_dir).string();
    return make_fingerprint(c, images.instance, {});
  };
  const auto base = fingerprint("base.safetensors", "config-a");
  ASSERT_TRUE(base.contains("model-file"));
  auto diffs = fingerprint_differences(base, fingerprint("tuned.safetensors", "config-a"));
  ASSERT_EQ(diffs.size(), 1u) << joined_lines(diffs);
  EXPECT_EQ(diffs[0].rfind("model-file.weights", 0), 0u) << diffs[0];
  diffs = fingerprint_differences(base, fingerprint("base.safetensors", "config-b"));
  EXPECT_TRUE(std::any_of(diffs.begin(), diffs.end(), [](const std::string& d) {
    return d.rfind("model-file.unet/config.json", 0) == 0;
  })) << joined_lines(diffs);
  auto older = base;
  older.erase("model-file");
  EXPECT_TRUE(compare_fingerprints(older, base, false).differences.empty());
}

TEST(Fingerprint, NumStepsCountsOnlyWhenTheScheduleDependsOnItAndCanBeAllowed) {
  auto dir = dreamlora::testing::make_temp_dir("fp-steps");
  auto images = same_named_images(dir, "instance", "x");
  auto c = fingerprint_config(dir / "no-model");
  auto longer = c;
  longer.num_steps = c.num_steps + 100;
  EXPECT_TRUE(compare_fingerprints(make_fingerprint(c, images.instance, {}),
                                   make_fingerprint(longer, images.instance, {}), false)
                  .differences.empty());
  c.scheduler = longer.scheduler = "cosine";
  const io::Json saved = make_fingerprint(c, images.instance, {});
  const io::Json now = make_fingerprint(longer, images.instance, {});
  auto refused = compare_fingerprints(saved, now, false);
  ASSERT_EQ(refused.differences.size(), 1u) << joined_lines(refused.differences);
  EXPECT_NE(refused.differences[0].find("--num-steps: checkpoint 500, now 600"), std::string::npos);
  EXPECT_NE(refused.differences[0].find("--allow-schedule-change"), std::string::npos);
  auto allowed = compare_fingerprints(saved, now, true);
  EXPECT_TRUE(allowed.differences.empty()) << joined_lines(allowed.differences);
  EXPECT_NE(joined_lines(allowed.notes).find("--allow-schedule-change"), std::string::npos);
}

// A checkpoint of an older dreamlora: one "data" map of instance and class images, no weights or captions.
TEST(Fingerprint, AnOlderCheckpointStillResumesAndItsDataIsStillCompared) {
  auto dir = dreamlora::testing::make_temp_dir("fp-old");
  auto c = fingerprint_config(dir / "no-model");
  auto images = same_named_images(dir, "instance", "x");
  const io::Json now = make_fingerprint(c, images.instance, {});
  io::Json old = now;
  for (const char* key : {"model-weights", "instance-data", "instance-captions"}) old.erase(key);
  old["data"] = io::Json::object();
  old["data"]["a.png"] = checkpoint::xxh3_file_hex(images.instance[0].path);
  auto check = compare_fingerprints(old, now, false);
  EXPECT_TRUE(check.differences.empty()) << joined_lines(check.differences);
  EXPECT_NE(joined_lines(check.notes).find("'model-weights' is not recorded in this checkpoint"),
            std::string::npos)
      << joined_lines(check.notes);
  old["data"]["a.png"] = "0000000000000000";
  auto changed = compare_fingerprints(old, now, false);
  ASSERT_EQ(changed.differences.size(), 1u) << joined_lines(changed.differences);
  EXPECT_EQ(changed.differences[0].rfind("data.a.png", 0), 0u) << changed.differences[0];
}

// Cost of the sampled weights hash on a large file (run by hand: --gtest_also_run_disabled_tests, size in
// DREAMLORA_WEIGHTS_HASH_BENCH_MB, default 2048): 1,680 fp16 tensors as in SDXL's UNet, page cache
// dropped first (cold) and then warm; a full-file XXH3 for comparison.
TEST(Fingerprint, DISABLED_WeightsSampleHashCostOnALargeFile) {
  const char* env = std::getenv("DREAMLORA_WEIGHTS_HASH_BENCH_MB");
  const uint64_t total = (env ? std::stoull(env) : 2048ull) << 20;
  const int tensors = 1680;
  const uint64_t per_tensor = total / tensors / 2 * 2;
  auto dir = dreamlora::testing::make_temp_dir("fp-bench");
  const fs::path file = dir / "diffusion_pytorch_model.safetensors";
  {
    io::Json header = io::Json::object();
    for (int i = 0; i < tensors; ++i)
      header[str("t", 10000 + i)] = {{"dtype", "F16"},
                                     {"shape", {static_cast<int64_t>(per_tensor / 2)}},
                                     {"data_offsets", {i * per_tensor, (i + 1) * per_tensor}}};
    const std::string text = header.dump();
    const uint64_t n = text.size();
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << text;
    std::string block(1 << 20, '\0');
    std::mt19937_64 rng(1);
    for (auto& c : block) c = static_cast<char>(rng());
    for (uint64_t written = 0; written < tensors * per_tensor;) {
      const uint64_t k = std::min<uint64_t>(block.size(), tensors * per_tensor - written);
      block[written % 977] ^= 1;
      out.write(block.data(), static_cast<std::streamsize>(k));
      written += k;
    }
  }
  auto drop_cache = [&] {
    int fd = ::open(file.c_str(), O_RDONLY);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  };
  auto seconds = [](auto fn) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double mb = static_cast<double>(fs::file_size(file)) / (1 << 20);
  drop_cache();
  const double cold = seconds([&] { weights_sample_hash(file); });
  const double warm = seconds([&] { weights_sample_hash(file); });
  drop_cache();
  const double full_cold = seconds([&] { checkpoint::xxh3_file_hex(file); });
  const double full_warm = seconds([&] { checkpoint::xxh3_file_hex(file); });
  std::printf(
      "[ bench ] %.0f MiB, %d tensors: sampled hash %.3f s cold, %.3f s warm (%.0f MiB/s of file); "
      "full XXH3 %.2f s cold (%.0f MiB/s), %.2f s warm (%.0f MiB/s)\n",
      mb, tensors, cold, warm, mb / warm, full_cold, mb / full_cold, full_warm, mb / full_warm);
  fs::remove_all(dir);
}

TEST(Fingerprint, ChangingThePredictionTypeOnResumeIsRefused) {
  auto dir = dreamlora::testing::make_temp_dir("fp-prediction");
  auto images = same_named_images(dir, "instance", "x");
  auto c = fingerprint_config(dir / "no-model");
  auto v = c;
  v.prediction_type = "v_prediction";
  auto check = compare_fingerprints(make_fingerprint(c, images.instance, {}),
                                    make_fingerprint(v, images.instance, {}), false);
  ASSERT_EQ(check.differences.size(), 1u) << joined_lines(check.differences);
  EXPECT_EQ(check.differences[0].rfind("prediction-type: checkpoint \"\", now \"v_prediction\"", 0), 0u)
      << check.differences[0];
  fs::remove_all(dir);
}
