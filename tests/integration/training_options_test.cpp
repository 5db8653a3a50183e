// The training options users reach for, end to end on the tiny models: Prodigy and SGD (with input
// perturbation and a warm-up) resume byte-identical to an uninterrupted run; captions with a template
// reach the text encoder and the fingerprint; --train-text-encoder trains, resumes byte-identical and
// exports text-encoder LoRA keys in diffusers and kohya files, for SD1 and both SDXL encoders.
#include <filesystem>
#include <fstream>

#include "dreamlora/io/image.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct OptionsWorld {
  fs::path root, sd, sdxl, images, mixed_sizes;
};

void write_pattern_image(const fs::path& path, int width, int height, int seed) {
  dreamlora::io::Image img{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        img.rgb[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>((x * (5 + seed) + y * (3 + c) + seed * 40) % 256);
  dreamlora::io::save_png(path, img);
}
const OptionsWorld& options_world() {
  static OptionsWorld w = [] {
    OptionsWorld w;
    w.root = make_temp_dir("options-world");
    w.sd = w.root / "tiny-sd";
    w.sdxl = w.root / "tiny-sdxl";
    w.images = w.root / "subject";
    dreamlora::synth::write_tiny_model(w.sd, {});
    dreamlora::synth::write_tiny_model(w.sdxl, {true, 0});
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    // Photos that are not square: landscape, portrait and square ones for three buckets.
    w.mixed_sizes = w.root / "mixed-sizes";
    fs::create_directories(w.mixed_sizes);
    const int sizes[][2] = {{60, 40}, {64, 40}, {40, 60}, {40, 64}, {40, 40}, {48, 48}};
    for (int i = 0; i < 6; ++i)
      write_pattern_image(w.mixed_sizes / ("img-" + std::to_string(i) + ".png"), sizes[i][0], sizes[i][1], i);
    return w;
  }();
  return w;
}

std::vector<std::string> options_args(const fs::path& model, const fs::path& out, int steps,
                                      const std::vector<std::string>& extra) {
  std::vector<std::string> args{"--threads",
                                "2",
                                "train",
                                "--model",
                                model.string(),
                                "--image-path",
                                options_world().images.string(),
                                "--prompt",
                                "a photo of sks toy",
                                "--resolution",
                                "32",
                                "--num-steps",
                                std::to_string(steps),
                                "--checkpointing-steps",
                                "2",
                                "--random-flip",
                                "--output-dir",
                                out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Runs `steps` steps uninterrupted into a, and stopped at stop_at then resumed into b; both must end
// byte-identical (diffusers and kohya files).
void expect_resume_byte_identical(const fs::path& model, const std::vector<std::string>& extra, int steps,
                                  int stop_at, const fs::path& a, const fs::path& b) {
  auto full = run_dreamlora(options_args(model, a, steps, extra));
  ASSERT_EQ(full.exit_status, 0) << full.output;
  auto first = run_dreamlora(options_args(model, b, steps, extra),
                             {"DREAMLORA_TEST_STOP_AT_STEP=" + std::to_string(stop_at)});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  auto second = run_dreamlora(options_args(model, b, steps, extra));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  for (const char* f : {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"})
    EXPECT_EQ(read_text(a / f), read_text(b / f)) << f << " differs after resume";
}

std::vector<std::string> tensor_names(const fs::path& file) {
  return dreamlora::io::safetensors::File::open(file).names();
}
int count_prefixed(const std::vector<std::string>& names, const std::string& prefix) {
  int n = 0;
  for (const auto& k : names) n += k.rfind(prefix, 0) == 0;
  return n;
}

}  // namespace

TEST(TrainingOptions, ProdigyWithInputPerturbationAndWarmupResumesByteIdentical) {
  auto a = make_temp_dir("prodigy-a"), b = make_temp_dir("prodigy-b");
  expect_resume_byte_identical(options_world().sd,
                               {"--optimizer", "prodigy", "--lr", "1.0", "--lr_scheduler", "cosine",
                                "--lr_warmup_steps", "2", "--input_perturbation", "0.1"},
                               6, 3, a, b);
  auto meta = dreamlora::io::safetensors::File::open(b / "checkpoint-4" / "optimizer.safetensors").metadata();
  ASSERT_TRUE(meta.count("prodigy.d")) << "no Prodigy state in the checkpoint";
  EXPECT_EQ(meta.at("prodigy.k"), "3");  // the warm-up's LR-0 step is no Prodigy step
  auto names = tensor_names(b / "checkpoint-4" / "optimizer.safetensors");
  EXPECT_GT(count_prefixed(names, "unet."), 0);
  int p0 = 0;
  for (const auto& n : names) p0 += n.size() > 3 && n.compare(n.size() - 3, 3, ".p0") == 0;
  EXPECT_GT(p0, 0);
}

TEST(TrainingOptions, TwoFreshRunsWithLoraDropoutAndTheSameSeedEndByteIdentical) {
  auto a = make_temp_dir("dropout-a"), b = make_temp_dir("dropout-b");
  const std::vector<std::string> extra{"--lora-dropout", "0.5", "--lr", "1e-3", "--seed", "7"};
  ASSERT_EQ(run_dreamlora(options_args(options_world().sd, a, 3, extra)).exit_status, 0);
  ASSERT_EQ(run_dreamlora(options_args(options_world().sd, b, 3, extra)).exit_status, 0);
  EXPECT_EQ(read_text(a / "pytorch_lora_weights.safetensors"),
            read_text(b / "pytorch_lora_weights.safetensors"))
      << "the dropout masks depend on something besides --seed";
}

TEST(TrainingOptions, SgdWithNesterovMomentumResumesByteIdentical) {
  auto a = make_temp_dir("sgd-a"), b = make_temp_dir("sgd-b");
  expect_resume_byte_identical(options_world().sd,
                               {"--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--nesterov"}, 5,
                               3, a, b);
}

TEST(TrainingOptions, InputPerturbationChangesTheResult) {
  auto plain = make_temp_dir("perturb-off"), perturbed = make_temp_dir("perturb-on");
  ASSERT_EQ(run_dreamlora(options_args(options_world().sd, plain, 2, {"--lr", "1e-3"})).exit_status, 0);
  auto on = run_dreamlora(
      options_args(options_world().sd, perturbed, 2, {"--lr", "1e-3", "--input-perturbation", "0.5"}));
  ASSERT_EQ(on.exit_status, 0) << on.output;
  EXPECT_NE(read_text(plain / "pytorch_lora_weights.safetensors"),
            read_text(perturbed / "pytorch_lora_weights.safetensors"));
}

TEST(TrainingOptions, CaptionTemplateCaptionsAreEmbeddedAndFingerprinted) {
  auto root = make_temp_dir("captions-run");
  auto images = root / "images";
  fs::create_directories(images);
  for (const auto& e : fs::directory_iterator(options_world().images))
    fs::copy(e.path(), images / e.path().filename());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(images)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::ofstream(fs::path(files[0]).replace_extension(".caption")) << "on a red table";
  std::ofstream(fs::path(files[1]).replace_extension(".caption")) << "in the grass";
  auto args = [&](const std::string& templ) {
    auto a = options_args(options_world().sd, root / "out", 2,
                          {"--caption-extension", ".caption", "--caption-template", templ});
    a[6] = images.string();  // --image-path
    return a;
  };
  auto run = run_dreamlora(args("a photo of sks toy, {caption}"));
  ASSERT_EQ(run.exit_status, 0) << run.output;
  // Two captioned images and one with the prompt: three captions embedded once each.
  EXPECT_NE(run.output.find("text encoders released after embedding 3 captions"), std::string::npos)
      << run.output;
  // A checkpoint made with one template refuses another.
  auto again = run_dreamlora(args("sks toy {caption}"));
  EXPECT_NE(again.exit_status, 0);
  EXPECT_NE(again.output.find("caption"), std::string::npos) << again.output;
}

TEST(TrainingOptions, TextEncoderLoraOnSd1TrainsResumesAndExportsBothFormats) {
  auto a = make_temp_dir("te-sd-a"), b = make_temp_dir("te-sd-b");
  expect_resume_byte_identical(
      options_world().sd, {"--train-text-encoder", "--lr", "1e-3", "--text-encoder-lr", "1e-3"}, 4, 2, a, b);
  auto diffusers = tensor_names(a / "pytorch_lora_weights.safetensors");
  auto kohya = tensor_names(a / "pytorch_lora_weights_kohya.safetensors");
  EXPECT_GT(count_prefixed(diffusers, "text_encoder."), 0);
  EXPECT_GT(count_prefixed(diffusers, "unet."), 0);
  EXPECT_GT(count_prefixed(kohya, "lora_te_"), 0);
  EXPECT_EQ(count_prefixed(kohya, "lora_te1_"), 0);
  // The text-encoder LoRA moved: its up weights start at zero.
  auto file = dreamlora::io::safetensors::File::open(a / "pytorch_lora_weights.safetensors");
  double up_sum = 0;
  for (const auto& [name, t] : file.load_all())
    if (name.rfind("text_encoder.", 0) == 0 && name.find("up.weight") != std::string::npos)
      up_sum += t.abs().sum().item<double>();
  EXPECT_GT(up_sum, 0.0);
}

TEST(TrainingOptions, TextEncoderLoraOnBothSdxlEncodersTrainsResumesAndExportsBothFormats) {
  auto a = make_temp_dir("te-sdxl-a"), b = make_temp_dir("te-sdxl-b");
  expect_resume_byte_identical(options_world().sdxl,
                               {"--train-text-encoder", "--lr", "1e-3", "--text-encoder-lr", "1e-3"}, 4, 2, a,
                               b);
  auto diffusers = tensor_names(a / "pytorch_lora_weights.safetensors");
  auto kohya = tensor_names(a / "pytorch_lora_weights_kohya.safetensors");
  EXPECT_GT(count_prefixed(diffusers, "text_encoder."), 0);
  EXPECT_GT(count_prefixed(diffusers, "text_encoder_2."), 0);
  EXPECT_GT(count_prefixed(kohya, "lora_te1_"), 0);
  EXPECT_GT(count_prefixed(kohya, "lora_te2_"), 0);
  // Every text-encoder module in both files: down and up in diffusers', down, up and alpha in kohya's.
  EXPECT_EQ(
      (count_prefixed(diffusers, "text_encoder.") + count_prefixed(diffusers, "text_encoder_2.")) / 2 * 3,
      count_prefixed(kohya, "lora_te1_") + count_prefixed(kohya, "lora_te2_"));
}

namespace {
std::vector<std::string> bucket_flags(const std::vector<std::string>& more) {
  std::vector<std::string> f{"--image-path",
                             options_world().mixed_sizes.string(),
                             "--enable-bucket",
                             "--min-bucket-reso",
                             "16",
                             "--max-bucket-reso",
                             "64",
                             "--bucket-reso-steps",
                             "8",
                             "--lr",
                             "1e-3"};
  f.insert(f.end(), more.begin(), more.end());
  return f;
}
}  // namespace

// The later --image-path wins (CLI11 keeps the last value), so bucket_flags replaces the square images.
TEST(TrainingOptions, BucketedBatchesOfTwoResumeByteIdentical) {
  auto a = make_temp_dir("bucket-a"), b = make_temp_dir("bucket-b");
  expect_resume_byte_identical(options_world().sd, bucket_flags({"--batch-size", "2"}), 5, 3, a, b);
  auto log =
      run_dreamlora(options_args(options_world().sd, make_temp_dir("bucket-log"), 1, bucket_flags({})));
  EXPECT_NE(log.output.find("6 images in 3 buckets: 24x40 (2) 32x32 (2) 40x24 (2)"), std::string::npos)
      << log.output;
}

TEST(TrainingOptions, BucketedSdxlRandomCropResumesByteIdentical) {
  auto a = make_temp_dir("bucket-xl-a"), b = make_temp_dir("bucket-xl-b");
  expect_resume_byte_identical(options_world().sdxl, bucket_flags({}), 4, 2, a, b);
}

TEST(TrainingOptions, BucketedTwoWorkersEqualOneWorkerWithAccumulation) {
  auto one = make_temp_dir("bucket-accum"), two = make_temp_dir("bucket-dp");
  auto single =
      run_dreamlora(options_args(options_world().sd, one, 3, bucket_flags({"--gradient-accumulation", "2"})));
  ASSERT_EQ(single.exit_status, 0) << single.output;
  std::vector<std::string> launch{"launch", "--nproc-per-node", "2", "--grace", "5", "--"};
  auto worker = options_args(options_world().sd, two, 3, bucket_flags({"--dist-timeout", "30"}));
  worker[1] = "1";  // --threads 1 per worker
  launch.insert(launch.end(), worker.begin(), worker.end());
  auto pair = run_dreamlora(launch);
  ASSERT_EQ(pair.exit_status, 0) << pair.output;
  auto fa = dreamlora::io::safetensors::File::open(one / "pytorch_lora_weights.safetensors");
  auto fb = dreamlora::io::safetensors::File::open(two / "pytorch_lora_weights.safetensors");
  ASSERT_EQ(fa.names(), fb.names());
  double worst = 0;
  for (const auto& name : fa.names()) worst = std::max(worst, max_abs_diff(fa.get(name), fb.get(name)));
  std::cout << "[ parity ] bucketed 2 workers vs accumulation 2: LoRA max abs difference " << worst
            << std::endl;
  EXPECT_LE(worst, 1e-5);
}
