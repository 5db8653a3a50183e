// `dreamlora train` end to end on the project's tiny model, as a child process: a resumed run ends
// byte-identical to an uninterrupted one, SIGTERM leaves a valid checkpoint and status 75, a finished
// run only rewrites its outputs, changed settings are refused, bad data is reported before training.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../checkpoint/s3_test_support.h"
#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

// One tiny model and data set shared by every test of this file (made once, ~2 s).
struct World {
  fs::path root, model, images;
};
const World& world() {
  static World w = [] {
    World w;
    w.root = make_temp_dir("train-world");
    w.model = w.root / "tiny-sd";
    w.images = w.root / "subject";
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 3, 40, 1);
    return w;
  }();
  return w;
}

std::vector<std::string> train_args(const fs::path& out, int steps) {
  return {"--threads",
          "2",
          "train",
          "--model",
          world().model.string(),
          "--image-path",
          world().images.string(),
          "--prompt",
          "a photo of sks toy",
          "--resolution",
          "32",
          "--num-steps",
          std::to_string(steps),
          "--checkpointing-steps",
          "2",
          "--lr",
          "1e-3",
          "--random-flip",
          "--output-dir",
          out.string()};
}

std::string final_lora(const fs::path& out) {
  return read_text(out / "pytorch_lora_weights.safetensors");
}

}  // namespace

TEST(TrainResume, InterruptedAndResumedRunIsByteIdenticalToUninterrupted) {
  auto a = make_temp_dir("train-a"), b = make_temp_dir("train-b");
  auto full = run_dreamlora(train_args(a, 6));
  ASSERT_EQ(full.exit_status, 0) << full.output;

  auto first = run_dreamlora(train_args(b, 6), {"DREAMLORA_TEST_STOP_AT_STEP=3"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(b / "checkpoint-3").ok);
  EXPECT_FALSE(fs::exists(b / "pytorch_lora_weights.safetensors"));
  auto second = run_dreamlora(train_args(b, 6));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_EQ(final_lora(a), final_lora(b));
  EXPECT_EQ(read_text(a / "pytorch_lora_weights_kohya.safetensors"),
            read_text(b / "pytorch_lora_weights_kohya.safetensors"));
}

// A stop while loading (here the test hook's step 0) ends the run before its first step: exit 75, nothing
// saved, and the same command then trains exactly as an uninterrupted run.
TEST(TrainResume, AStopWhileLoadingExitsBeforeTheFirstStepAndTheRerunEndsIdentical) {
  auto a = make_temp_dir("train-load-a"), b = make_temp_dir("train-load-b");
  ASSERT_EQ(run_dreamlora(train_args(a, 4)).exit_status, 0);
  auto stopped = run_dreamlora(train_args(b, 4), {"DREAMLORA_TEST_STOP_AT_STEP=0"});
  ASSERT_EQ(stopped.exit_status, 75) << stopped.output;
  EXPECT_NE(stopped.output.find("before the first step: nothing to save"), std::string::npos)
      << stopped.output;
  for (const auto& e : fs::directory_iterator(b))
    EXPECT_NE(e.path().filename().string().rfind("checkpoint-", 0), 0u);
  auto rerun = run_dreamlora(train_args(b, 4));
  ASSERT_EQ(rerun.exit_status, 0) << rerun.output;
  EXPECT_EQ(final_lora(a), final_lora(b));
}

// SIGTERM while class images are being made: those made so far stay (each is written durably), the run exits
// 75 before its first step, and the rerun makes the rest and trains as a run that was never stopped.
TEST(TrainResume, SigtermWhileMakingClassImagesKeepsThemAndTheRerunEndsIdentical) {
  auto out = make_temp_dir("train-class-stop"), reference = make_temp_dir("train-class-ref");
  const auto classes = out.parent_path() / (out.filename().string() + "-class");
  auto args = [&](const fs::path& dir) {
    auto a = train_args(dir, 4);
    a.insert(a.end(), {"--prior-preservation", "--class-prompt", "a photo of a toy", "--class-image-path",
                       classes.string(), "--num-class-images", "60", "--sample-batch-size", "1",
                       "--validation-inference-steps", "4"});
    return a;
  };
  auto count_classes = [&] {
    int n = 0;
    if (fs::exists(classes))
      for (const auto& e : fs::directory_iterator(classes)) n += e.path().extension() == ".png";
    return n;
  };
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(args(out), log);
  for (int i = 0; i < 3000 && count_classes() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GT(count_classes(), 0) << read_text(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_process(pid), 75) << read_text(log);
  EXPECT_NE(read_text(log).find("before the first step"), std::string::npos) << read_text(log);
  EXPECT_LT(count_classes(), 60);
  auto rerun = run_dreamlora(args(out));
  ASSERT_EQ(rerun.exit_status, 0) << rerun.output;
  EXPECT_EQ(count_classes(), 60);
  ASSERT_EQ(run_dreamlora(args(reference)).exit_status, 0);  // same class images, never stopped
  EXPECT_EQ(final_lora(out), final_lora(reference));
  fs::remove_all(classes);
}

TEST(TrainResume, SigtermFinishesTheStepWritesACheckpointAndExits75) {
  auto out = make_temp_dir("train-sigterm");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(train_args(out, 400), log);
  for (int i = 0; i < 600 && !fs::exists(out / "checkpoint-2"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "checkpoint-2")) << read_text(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_process(pid), 75) << read_text(log);
  auto inspect = run_dreamlora({"inspect", out.string()});
  EXPECT_EQ(inspect.exit_status, 0) << inspect.output;
  int64_t newest = -1;
  for (const auto& e : fs::directory_iterator(out)) {
    auto step = dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string());
    if (step) {
      EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(e.path()).ok) << e.path();
      newest = std::max(newest, *step);
    }
  }
  EXPECT_GE(newest, 2);
  EXPECT_NE(read_text(log).find("SIGTERM"), std::string::npos);
}

TEST(TrainResume, AFinishedRunOnlyRewritesItsOutputs) {
  auto out = make_temp_dir("train-done");
  ASSERT_EQ(run_dreamlora(train_args(out, 2)).exit_status, 0);
  auto before = final_lora(out);
  auto again = run_dreamlora(train_args(out, 2));
  ASSERT_EQ(again.exit_status, 0) << again.output;
  EXPECT_NE(again.output.find("at step 2 of 2"), std::string::npos) << again.output;
  EXPECT_EQ(final_lora(out), before);
}

// Without a validation prompt the trainer embeds every caption up front and frees the text encoders;
// with one it keeps them for the validation images. The trained LoRA is the same either way.
TEST(TrainResume, FreeingTheTextEncodersUpFrontLeavesTheResultUnchanged) {
  auto freed = make_temp_dir("train-te-freed"), kept = make_temp_dir("train-te-kept");
  auto a = run_dreamlora(train_args(freed, 3));
  ASSERT_EQ(a.exit_status, 0) << a.output;
  EXPECT_NE(a.output.find("text encoders released after embedding 1 caption"), std::string::npos) << a.output;
  auto args = train_args(kept, 3);
  args.insert(args.end(), {"--validation-prompt", "a photo of sks toy", "--validation-inference-steps", "2"});
  auto b = run_dreamlora(args);
  ASSERT_EQ(b.exit_status, 0) << b.output;
  EXPECT_EQ(b.output.find("text encoders released"), std::string::npos) << b.output;
  EXPECT_TRUE(fs::exists(kept / "validation"));
  EXPECT_EQ(final_lora(freed), final_lora(kept));
}

TEST(TrainResume, ChangedResultSettingIsRefusedWithTheDifference) {
  auto out = make_temp_dir("train-changed");
  ASSERT_EQ(run_dreamlora(train_args(out, 2)).exit_status, 0);
  auto args = train_args(out, 4);
  args.push_back("--rank");
  args.push_back("8");
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("rank: checkpoint 4, now 8"), std::string::npos) << r.output;
}

TEST(TrainErrors, EmptyImageFolderAndTooLargeBatchAreReportedBeforeTraining) {
  auto empty = make_temp_dir("train-empty");
  auto out = make_temp_dir("train-err");
  auto args = train_args(out, 2);
  args[6] = empty.string();  // --image-path
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("--image-path"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no images"), std::string::npos) << r.output;

  args = train_args(out, 2);
  args.push_back("--batch-size");
  args.push_back("5");
  r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("--batch-size 5 is larger than the 3 instance images"), std::string::npos)
      << r.output;

  args = train_args(out, 2);
  args.push_back("--identifier");
  args.push_back("zwx");
  r = run_dreamlora(args);
  EXPECT_NE(r.output.find("does not contain the identifier 'zwx'"), std::string::npos) << r.output;
}

TEST(TrainErrors, CorruptImageIsNamed) {
  auto dir = make_temp_dir("train-corrupt");
  fs::copy(world().images, dir, fs::copy_options::recursive);
  {
    std::ofstream(dir / "broken.png") << "this is not a png";
  }
  auto out = make_temp_dir("train-corrupt-out");
  auto args = train_args(out, 2);
  args[6] = dir.string();
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("broken.png"), std::string::npos) << r.output;
}

// A loopback HTTP endpoint that announces a preemption on every request.
// Answers 404 (no notice, as AWS's spot endpoint does) to the first `quiet` polls, then a notice.
class NoticeServer {
 public:
  explicit NoticeServer(int quiet = 0) : quiet_(quiet) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(fd_, 8);
    thread_ = std::thread([this] {
      while (true) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        char buf[4096];
        (void)!read(c, buf, sizeof(buf));
        const std::string reply =
            quiet_-- > 0
                ? "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                : "HTTP/1.1 200 OK\r\nContent-Length: 20\r\nConnection: close\r\n\r\npreempting in 120 s\n";
        (void)!write(c, reply.data(), reply.size());
        close(c);
      }
    });
  }
  ~NoticeServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/notice"; }

 private:
  int fd_ = -1;
  int port_ = 0;
  int quiet_ = 0;
  std::thread thread_;
};

// The first poll comes while the model loads; the notice at the next one (2 s later), during training.
TEST(TrainPreemption, ANoticeFromTheWatchedEndpointStopsWithACheckpoint) {
  NoticeServer server(1);
  auto out = make_temp_dir("train-notice");
  auto args = train_args(out, 400);
  args.push_back("--watch-preemption");
  args.push_back(server.url());
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 75) << r.output;
  EXPECT_NE(r.output.find("preemption notice"), std::string::npos) << r.output;
  bool found = false;
  for (const auto& e : fs::directory_iterator(out))
    if (dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string())) {
      found = true;
      EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(e.path()).ok) << e.path();
    }
  EXPECT_TRUE(found) << r.output;
}

TEST(TrainPreemption, ANoticeWhileLoadingEndsTheRunBeforeItsFirstStep) {
  NoticeServer server;
  auto out = make_temp_dir("train-notice-load");
  auto args = train_args(out, 400);
  args.push_back("--watch-preemption");
  args.push_back(server.url());
  auto r = run_dreamlora(args);
  EXPECT_EQ(r.exit_status, 75) << r.output;
  EXPECT_NE(r.output.find("before the first step"), std::string::npos) << r.output;
}

TEST(TrainMirror, AFreshMachineResumesFromTheS3MirrorWithTheSameFinalBytes) {
  REQUIRE_S3RVER(s3rver_binary);
  dreamlora::checkpoint::testing::S3rver server(s3rver_binary);
  auto data = make_temp_dir("s3-data");
  ASSERT_TRUE(server.start(data)) << server.error();
  std::vector<std::string> env = {std::string("AWS_ACCESS_KEY_ID=") + server.kAccessKey,
                                  std::string("AWS_SECRET_ACCESS_KEY=") + server.kSecretKey,
                                  "AWS_REGION=us-east-1"};
  auto mirror_args = [&](const fs::path& out, int steps) {
    auto a = train_args(out, steps);
    a.insert(a.end(), {"--checkpoint-mirror", std::string("s3://") + server.kBucket + "/run1",
                       "--s3-endpoint", server.endpoint()});
    return a;
  };
  auto reference = make_temp_dir("mirror-ref");
  ASSERT_EQ(run_dreamlora(train_args(reference, 6)).exit_status, 0);

  auto machine1 = make_temp_dir("mirror-m1");
  auto first =
      run_dreamlora(mirror_args(machine1, 6), {env[0], env[1], env[2], "DREAMLORA_TEST_STOP_AT_STEP=3"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  auto machine2 = make_temp_dir("mirror-m2");  // the first machine's disk is gone
  auto second = run_dreamlora(mirror_args(machine2, 6), env);
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_EQ(final_lora(reference), final_lora(machine2));
}

TEST(TrainMirror, AnUploadCutShortByAKilledTrainerIsFinishedByTheNextRunAndOutputsAreUploaded) {
  REQUIRE_S3RVER(s3rver_binary);
  dreamlora::checkpoint::testing::S3rver server(s3rver_binary);
  auto data = make_temp_dir("s3-data3");
  ASSERT_TRUE(server.start(data)) << server.error();
  std::vector<std::string> env = {std::string("AWS_ACCESS_KEY_ID=") + server.kAccessKey,
                                  std::string("AWS_SECRET_ACCESS_KEY=") + server.kSecretKey,
                                  "AWS_REGION=us-east-1"};
  auto out = make_temp_dir("mirror-killed");
  auto a = train_args(out, 6);
  a.insert(a.end(), {"--checkpoint-mirror", std::string("s3://") + server.kBucket + "/run2", "--s3-endpoint",
                     server.endpoint()});
  // checkpoint-2 is 4 objects (3 files, then the manifest); the process dies after checkpoint-4's first file.
  auto killed_env = env;
  killed_env.push_back("DREAMLORA_TEST_CRASH_AFTER_UPLOADS=5");
  auto first = run_dreamlora(a, killed_env);
  ASSERT_EQ(first.exit_status, 99) << first.output;
  dreamlora::remote::S3Client client(server.config());
  const auto location =
      dreamlora::checkpoint::S3Location::parse(std::string("s3://") + server.kBucket + "/run2");
  auto remote = dreamlora::checkpoint::list_remote_checkpoints(client, location);
  ASSERT_EQ(remote.size(), 2u);
  ASSERT_EQ(remote[1].step, 4);
  EXPECT_FALSE(remote[1].has_manifest);

  auto second = run_dreamlora(a, env);
  ASSERT_EQ(second.exit_status, 0) << second.output;
  remote = dreamlora::checkpoint::list_remote_checkpoints(client, location);
  ASSERT_EQ(remote.size(), 3u);
  for (const auto& r : remote) EXPECT_TRUE(r.has_manifest) << "checkpoint-" << r.step;
  auto fresh = make_temp_dir("mirror-killed-check");
  EXPECT_TRUE(dreamlora::checkpoint::download_checkpoint(client, location, 4, fresh).ok);
  EXPECT_EQ(client.get_bytes_if_exists(server.kBucket, "run2/pytorch_lora_weights.safetensors"),
            std::optional<std::string>(final_lora(out)));
  EXPECT_TRUE(client.get_bytes_if_exists(server.kBucket, "run2/README.md").has_value());
  EXPECT_NE(second.output.find("no failures"), std::string::npos) << second.output;
}

TEST(TrainMirror, AFreshMachineResumesFromADirectoryMirrorWithTheSameFinalBytes) {
  auto reference = make_temp_dir("dirmirror-ref");
  ASSERT_EQ(run_dreamlora(train_args(reference, 6)).exit_status, 0);
  auto mirror = make_temp_dir("dirmirror");
  auto machine1 = make_temp_dir("dirmirror-m1"), machine2 = make_temp_dir("dirmirror-m2");
  auto with_mirror = [&](const fs::path& out) {
    auto a = train_args(out, 6);
    a.insert(a.end(), {"--checkpoint-mirror", mirror.string()});
    return a;
  };
  ASSERT_EQ(run_dreamlora(with_mirror(machine1), {"DREAMLORA_TEST_STOP_AT_STEP=3"}).exit_status, 75);
  auto second = run_dreamlora(with_mirror(machine2));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_EQ(final_lora(reference), final_lora(machine2));
  EXPECT_EQ(final_lora(mirror), final_lora(machine2));  // the final outputs are mirrored too
}

TEST(TrainMirror, WrongCredentialsFailBeforeTraining) {
  REQUIRE_S3RVER(s3rver_binary);
  // s3rver does not check signatures, so a missing bucket stands in for refused access here
  // (tests/checkpoint/s3_client_test covers 403 with a stub server).
  dreamlora::checkpoint::testing::S3rver server(s3rver_binary);
  auto data = make_temp_dir("s3-data2");
  ASSERT_TRUE(server.start(data)) << server.error();
  auto out = make_temp_dir("mirror-bad");
  auto a = train_args(out, 4);
  a.insert(a.end(), {"--checkpoint-mirror", "s3://no-such-bucket/x", "--s3-endpoint", server.endpoint()});
  auto r = run_dreamlora(a, {"AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b"});
  EXPECT_EQ(r.exit_status, 1);
  EXPECT_NE(r.output.find("no-such-bucket"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out / "checkpoint-2"));
}

TEST(TrainQuality, LossFallsOverAShortRunOnTheFixtureModel) {
  REQUIRE_FIXTURES();
  auto images = make_temp_dir("loss-images");
  dreamlora::synth::write_demo_subject_images(images, 1, 32, 3);
  auto out = make_temp_dir("loss-falls");
  auto r = run_dreamlora({"--threads", "1", "train", "--model", (fixtures_dir() / "tiny-sd").string(),
                          "--image-path", images.string(), "--prompt", "a photo of sks toy", "--resolution",
                          "32", "--num-steps", "60", "--checkpointing-steps", "0", "--lr", "1e-2",
                          "--output-dir", out.string()});
  ASSERT_EQ(r.exit_status, 0) << r.output;
  std::vector<double> losses;
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  ASSERT_EQ(losses.size(), 60u);
  double first = 0, last = 0;
  for (int i = 0; i < 15; ++i) first += losses[i] / 15, last += losses[45 + i] / 15;
  std::cout << "[ loss ] mean of steps 1-15 " << first << ", steps 46-60 " << last << std::endl;
  EXPECT_LT(last, 0.9 * first);
}

TEST(TrainOutputs, TheTrainedLoRALoadsInSampleInBothFormats) {
  auto out = make_temp_dir("train-sample");
  ASSERT_EQ(run_dreamlora(train_args(out, 2)).exit_status, 0);
  for (const char* file : {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"}) {
    auto samples = make_temp_dir("samples");
    auto r = run_dreamlora({"sample", "--model", world().model.string(), "--lora", (out / file).string(),
                            "--prompt", "a photo of sks toy", "--steps", "2", "--width", "32", "--height",
                            "32", "--out", samples.string()});
    ASSERT_EQ(r.exit_status, 0) << r.output;
    EXPECT_TRUE(fs::exists(samples / "sample-0-0.png")) << r.output;
    EXPECT_NE(read_text(samples / "sample-0-0.png").find(file),
              std::string::npos);  // recorded in a text chunk
  }
  EXPECT_NE(read_text(out / "README.md").find("a photo of sks toy"), std::string::npos);
}

TEST(RunComponent, UnetOnFixtureInputsMatchesTheReference) {
  REQUIRE_FIXTURES();
  auto ref = dreamlora::io::safetensors::File::open(fixtures_dir() / "tiny-sd/reference.safetensors");
  auto dir = make_temp_dir("run-component");
  dreamlora::io::safetensors::save(dir / "in.safetensors",
                                   dreamlora::io::safetensors::NamedTensors{
                                       {"sample", ref.get("unet.sample")},
                                       {"timestep", ref.get("unet.timesteps")},
                                       {"encoder_hidden_states", ref.get("unet.encoder_hidden_states")}});
  auto r = run_dreamlora({"run-component", "--model", (fixtures_dir() / "tiny-sd").string(), "--component",
                          "unet", "--inputs", (dir / "in.safetensors").string(), "--out",
                          (dir / "out.safetensors").string()});
  ASSERT_EQ(r.exit_status, 0) << r.output;
  auto out = dreamlora::io::safetensors::File::open(dir / "out.safetensors");
  EXPECT_TENSOR_NEAR(out.get("sample"), ref.get("unet.out"), 1e-5);

  auto missing = run_dreamlora({"run-component", "--model", (fixtures_dir() / "tiny-sd").string(),
                                "--component", "vae_decoder", "--inputs", (dir / "in.safetensors").string(),
                                "--out", (dir / "x.safetensors").string()});
  EXPECT_EQ(missing.exit_status, 1);
  EXPECT_NE(missing.output.find("missing tensor 'latents'"), std::string::npos) << missing.output;
}
