// `dreamlora pretrain` end to end on the world preset of the tiny model, as a child process: an interrupted
// and resumed UNet run ends byte-identical to an uninterrupted one, the VAE stage lowers its loss and sets
// scaling_factor, and the written pipeline samples.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/image.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct PretrainWorld {
  fs::path model, data;
};

// Flat-coloured 64x64 squares of four colours with captions naming the colour.
void write_coloured_squares(const fs::path& dir) {
  fs::create_directories(dir);
  const std::vector<std::pair<std::string, std::array<uint8_t, 3>>> colours = {
      {"red", {220, 30, 30}}, {"green", {30, 180, 40}}, {"blue", {30, 60, 220}}, {"yellow", {240, 220, 30}}};
  for (size_t i = 0; i < colours.size(); ++i) {
    dreamlora::io::Image img;
    img.width = img.height = 64;
    img.rgb.assign(64 * 64 * 3, 0);
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x) {
        const bool inside = x >= 16 && x < 48 && y >= 16 && y < 48;
        for (int c = 0; c < 3; ++c) img.rgb[(y * 64 + x) * 3 + c] = inside ? colours[i].second[c] : 128;
      }
    char name[16];
    std::snprintf(name, sizeof(name), "%06zu", i);
    dreamlora::io::save_png(dir / (std::string(name) + ".png"), img);
    std::ofstream(dir / (std::string(name) + ".txt"))
        << "a photo of a " << colours[i].first << " square on a gray background\n";
  }
}

const PretrainWorld& pretrain_world() {
  static PretrainWorld w = [] {
    PretrainWorld w;
    auto root = make_temp_dir("pretrain-world");
    w.model = root / "tiny-world-sd";
    w.data = root / "data";
    dreamlora::synth::TinyModelOptions o;
    o.world = true;
    dreamlora::synth::write_tiny_model(w.model, o);
    write_coloured_squares(w.data);
    return w;
  }();
  return w;
}

std::vector<std::string> pretrain_args(const std::string& stage, const fs::path& model, const fs::path& out,
                                       int steps) {
  return {"--threads",
          "1",
          "pretrain",
          "--stage",
          stage,
          "--model",
          model.string(),
          "--data",
          pretrain_world().data.string(),
          "--output-dir",
          out.string(),
          "--num-steps",
          std::to_string(steps),
          "--batch-size",
          "4",
          "--warmup-steps",
          "0",
          "--checkpointing-steps",
          "2",
          "--log-every",
          "1"};
}

// The mean loss the log prints for each step.
std::vector<double> logged_losses(const std::string& output) {
  std::vector<double> out;
  std::regex line(R"(step \d+/\d+ loss ([0-9.eE+-]+))");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), line); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

}  // namespace

TEST(Pretrain, InterruptedAndResumedUnetRunIsByteIdenticalToUninterrupted) {
  auto a = make_temp_dir("pretrain-a"), b = make_temp_dir("pretrain-b");
  auto full = run_dreamlora(pretrain_args("unet", pretrain_world().model, a, 5));
  ASSERT_EQ(full.exit_status, 0) << full.output;

  auto first =
      run_dreamlora(pretrain_args("unet", pretrain_world().model, b, 5), {"DREAMLORA_TEST_STOP_AT_STEP=3"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(b / "checkpoint-3").ok);
  EXPECT_FALSE(fs::exists(b / "pipeline"));
  auto second = run_dreamlora(pretrain_args("unet", pretrain_world().model, b, 5));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  const std::string weights = "pipeline/unet/diffusion_pytorch_model.safetensors";
  EXPECT_EQ(read_text(a / weights), read_text(b / weights));
  // The finished run ended with a checkpoint: the same command again only rewrites the pipeline.
  auto again = run_dreamlora(pretrain_args("unet", pretrain_world().model, a, 5));
  ASSERT_EQ(again.exit_status, 0) << again.output;
  EXPECT_NE(again.output.find("0 steps to go"), std::string::npos) << again.output;
  EXPECT_EQ(read_text(a / weights), read_text(b / weights));
  EXPECT_NE(read_text(a / weights),
            read_text(pretrain_world().model / "unet/diffusion_pytorch_model.safetensors"));
}

TEST(Pretrain, TextEncoderTrainedWithTheUnetIsWrittenAndResumesByteIdentical) {
  auto a = make_temp_dir("pretrain-te-a"), b = make_temp_dir("pretrain-te-b");
  auto args = [&](const fs::path& out) {
    auto v = pretrain_args("unet", pretrain_world().model, out, 4);
    v.push_back("--train-text-encoder");
    return v;
  };
  auto full = run_dreamlora(args(a));
  ASSERT_EQ(full.exit_status, 0) << full.output;
  auto first = run_dreamlora(args(b), {"DREAMLORA_TEST_STOP_AT_STEP=2"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  auto second = run_dreamlora(args(b));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  for (const std::string weights :
       {"pipeline/unet/diffusion_pytorch_model.safetensors", "pipeline/text_encoder/model.safetensors"})
    EXPECT_EQ(read_text(a / weights), read_text(b / weights)) << weights;
  const auto trained =
      dreamlora::io::safetensors::File::open(a / "pipeline/text_encoder/model.safetensors").load_all();
  const auto initial =
      dreamlora::io::safetensors::File::open(pretrain_world().model / "text_encoder/model.safetensors")
          .load_all();
  ASSERT_EQ(trained.size(), initial.size());
  const std::string name = "text_model.encoder.layers.0.self_attn.k_proj.weight";
  ASSERT_TRUE(trained.count(name) && initial.count(name));
  EXPECT_FALSE(torch::equal(trained.at(name), initial.at(name)));
  // A frozen-text-encoder checkpoint is not resumed by a run that trains it.
  auto frozen = make_temp_dir("pretrain-te-frozen");
  ASSERT_EQ(run_dreamlora(pretrain_args("unet", pretrain_world().model, frozen, 4),
                          {"DREAMLORA_TEST_STOP_AT_STEP=2"})
                .exit_status,
            75);
  auto r = run_dreamlora(args(frozen));
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("settings differ"), std::string::npos) << r.output;
}

TEST(Pretrain, SnrGammaWeightsTheLossResumesByteIdenticalAndIsPartOfTheSettings) {
  auto plain = make_temp_dir("pretrain-snr-plain"), a = make_temp_dir("pretrain-snr-a"),
       b = make_temp_dir("pretrain-snr-b");
  auto args = [&](const fs::path& out, const std::string& gamma) {
    auto v = pretrain_args("unet", pretrain_world().model, out, 4);
    v.insert(v.end(), {"--snr-gamma", gamma});
    return v;
  };
  ASSERT_EQ(run_dreamlora(args(plain, "0")).exit_status, 0);
  auto full = run_dreamlora(args(a, "5"));
  ASSERT_EQ(full.exit_status, 0) << full.output;
  ASSERT_EQ(run_dreamlora(args(b, "5"), {"DREAMLORA_TEST_STOP_AT_STEP=2"}).exit_status, 75);
  auto second = run_dreamlora(args(b, "5"));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  const std::string weights = "pipeline/unet/diffusion_pytorch_model.safetensors";
  EXPECT_EQ(read_text(a / weights), read_text(b / weights));
  EXPECT_NE(read_text(a / weights), read_text(plain / weights));  // the weighting changed the updates
  // A checkpoint of another gamma is not resumed.
  auto changed = make_temp_dir("pretrain-snr-changed");
  ASSERT_EQ(run_dreamlora(args(changed, "5"), {"DREAMLORA_TEST_STOP_AT_STEP=2"}).exit_status, 75);
  auto r = run_dreamlora(args(changed, "1"));
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("settings differ"), std::string::npos) << r.output;
  auto negative = run_dreamlora(args(make_temp_dir("pretrain-snr-negative"), "-1"));
  EXPECT_EQ(negative.exit_status, 1);
  EXPECT_NE(negative.output.find("--snr-gamma"), std::string::npos) << negative.output;
}

TEST(Pretrain, SigtermWritesACheckpointAndExits75) {
  auto out = make_temp_dir("pretrain-sigterm");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(pretrain_args("unet", pretrain_world().model, out, 400), log);
  for (int i = 0; i < 600 && !fs::exists(out / "checkpoint-2"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "checkpoint-2")) << read_text(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_process(pid), 75) << read_text(log);
  EXPECT_NE(read_text(log).find("SIGTERM"), std::string::npos) << read_text(log);
  EXPECT_FALSE(fs::exists(out / "pipeline"));
}

TEST(Pretrain, ChangedSettingsAreRefused) {
  auto out = make_temp_dir("pretrain-changed");
  ASSERT_EQ(
      run_dreamlora(pretrain_args("unet", pretrain_world().model, out, 3), {"DREAMLORA_TEST_STOP_AT_STEP=2"})
          .exit_status,
      75);
  auto args = pretrain_args("unet", pretrain_world().model, out, 3);
  args.insert(args.end(), {"--lr", "5e-4"});
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("settings differ"), std::string::npos) << r.output;
}

TEST(Pretrain, VaeStageLowersTheLossSetsScalingFactorAndThePipelineSamples) {
  auto vae_out = make_temp_dir("pretrain-vae");
  auto args = pretrain_args("vae", pretrain_world().model, vae_out, 12);
  args.insert(args.end(), {"--lr", "2e-3", "--max-grad-norm", "0"});
  auto vae = run_dreamlora(args);
  ASSERT_EQ(vae.exit_status, 0) << vae.output;
  auto losses = logged_losses(vae.output);
  ASSERT_EQ(losses.size(), 12u) << vae.output;
  const double first = (losses[0] + losses[1]) / 2, last = (losses[10] + losses[11]) / 2;
  EXPECT_LT(last, 0.8 * first) << vae.output;
  auto config = nlohmann::json::parse(read_text(vae_out / "pipeline/vae/config.json"));
  EXPECT_NE(config.at("scaling_factor").get<double>(), 0.18215);
  EXPECT_GT(config.at("scaling_factor").get<double>(), 0.0);
  EXPECT_TRUE(fs::exists(vae_out / "reconstructions.png"));

  // The UNet stage on the trained VAE, saved in fp16, then sampled by our pipeline.
  auto unet_out = make_temp_dir("pretrain-unet-fp16");
  args = pretrain_args("unet", vae_out / "pipeline", unet_out, 2);
  args.insert(args.end(), {"--save-dtype", "fp16"});
  auto unet = run_dreamlora(args);
  ASSERT_EQ(unet.exit_status, 0) << unet.output;
  auto file =
      dreamlora::io::safetensors::File::open(unet_out / "pipeline/unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(file.info(file.names().front()).dtype, "F16");
  auto samples = make_temp_dir("pretrain-samples");
  auto sample = run_dreamlora({"sample", "--model", (unet_out / "pipeline").string(), "--prompt",
                               "a photo of a red square on a gray background", "--steps", "2", "--out",
                               samples.string()});
  ASSERT_EQ(sample.exit_status, 0) << sample.output;
  int pngs = 0;
  for (const auto& e : fs::directory_iterator(samples)) pngs += e.path().extension() == ".png";
  EXPECT_EQ(pngs, 1);
  auto img = dreamlora::io::load_image(fs::directory_iterator(samples)->path());
  EXPECT_EQ(img.width, 64);
}
