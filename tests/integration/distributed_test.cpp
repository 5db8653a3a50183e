// Data-parallel training on c10d/Gloo over loopback, through `dreamlora launch`: two workers of batch 1
// equal one worker of batch 2; checkpoints move between world sizes; SIGTERM stops every worker at one
// step with one valid checkpoint; a killed worker ends the job within --dist-timeout.
#include <signal.h>

#include <chrono>
#include <regex>
#include <thread>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/pipeline/demo_data.h"
#include "dreamlora/pipeline/tiny_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora::testing;

namespace {

struct DistWorld {
  fs::path model, images;
};
const DistWorld& dist_world() {
  static DistWorld w = [] {
    auto root = make_temp_dir("dist-world");
    DistWorld w{root / "tiny-sd", root / "subject"};
    dreamlora::write_tiny_model(w.model, {});
    dreamlora::write_demo_subject_images(w.images, 4, 40, 2);
    return w;
  }();
  return w;
}

std::vector<std::string> train(const fs::path& out, int batch, int steps) {
  return {"--threads", "1", "train", "--model", dist_world().model.string(), "--image-path", dist_world().images.string(),
          "--prompt", "a photo of sks toy", "--resolution", "32", "--num-steps", std::to_string(steps),
          "--batch-size", std::to_string(batch), "--checkpointing-steps", "2", "--lr", "1e-3",
          "--output-dir", out.string(), "--dist-timeout", "20"};
}

std::vector<std::string> launch(int n, const std::vector<std::string>& worker) {
  std::vector<std::string> a = {"launch", "--nproc-per-node", std::to_string(n), "--grace", "5", "--"};
  a.insert(a.end(), worker.begin(), worker.end());
  return a;
}

double max_lora_difference(const fs::path& a, const fs::path& b) {
  auto fa = dreamlora::safetensors::File::open(a), fb = dreamlora::safetensors::File::open(b);
  EXPECT_EQ(fa.names(), fb.names());
  double worst = 0;
  for (const auto& name : fa.names()) worst = std::max(worst, max_abs_diff(fa.get(name), fb.get(name)));
  return worst;
}

}  // namespace

TEST(Distributed, TwoWorkersOfBatchOneEqualOneWorkerOfBatchTwo) {
  auto one = make_temp_dir("dist-one"), two = make_temp_dir("dist-two");
  auto single = run_dreamlora(train(one, 2, 4));
  ASSERT_EQ(single.exit_status, 0) << single.output;
  auto pair = run_dreamlora(launch(2, train(two, 1, 4)));
  ASSERT_EQ(pair.exit_status, 0) << pair.output;
  double diff = max_lora_difference(one / "pytorch_lora_weights.safetensors", two / "pytorch_lora_weights.safetensors");
  std::cout << "[ parity ] 2x1 vs 1x2 LoRA max abs difference " << diff << std::endl;
  EXPECT_LE(diff, 1e-5);
}

TEST(Distributed, TwoWorkerCheckpointResumesOnOneWorker) {
  auto reference = make_temp_dir("dist-ref"), moved = make_temp_dir("dist-moved");
  ASSERT_EQ(run_dreamlora(train(reference, 2, 4)).exit_status, 0);
  auto first = run_dreamlora(launch(2, train(moved, 1, 4)), {"DREAMLORA_TEST_STOP_AT_STEP=2"});
  ASSERT_EQ(first.exit_status, 75) << first.output;
  auto second = run_dreamlora(train(moved, 2, 4));
  ASSERT_EQ(second.exit_status, 0) << second.output;
  EXPECT_NE(second.output.find("written by 2 worker(s), this run has 1"), std::string::npos) << second.output;
  EXPECT_LE(max_lora_difference(reference / "pytorch_lora_weights.safetensors", moved / "pytorch_lora_weights.safetensors"),
            1e-5);
}

TEST(Distributed, SigtermStopsAllWorkersWithOneValidCheckpoint) {
  auto out = make_temp_dir("dist-term");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(launch(2, train(out, 1, 400)), log);
  for (int i = 0; i < 900 && !fs::exists(out / "checkpoint-2"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "checkpoint-2")) << read_text(log);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_process(pid), 75) << read_text(log);
  for (const auto& e : fs::directory_iterator(out))
    if (dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string()))
      EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(e.path()).ok) << e.path();
}

TEST(Distributed, AKilledWorkerEndsTheJobWithinTheTimeout) {
  auto out = make_temp_dir("dist-kill");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(launch(2, train(out, 1, 400)), log);
  for (int i = 0; i < 900 && !fs::exists(out / "checkpoint-2"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "checkpoint-2")) << read_text(log);
  std::smatch m;
  std::string text = read_text(log);
  ASSERT_TRUE(std::regex_search(text, m, std::regex("worker 1 pid ([0-9]+)"))) << text;
  auto t0 = std::chrono::steady_clock::now();
  kill(std::stoi(m[1]), SIGKILL);
  int status = wait_process(pid);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(status, 0);
  EXPECT_NE(status, 75);
  EXPECT_LT(seconds, 60.0) << read_text(log);
  std::cout << "[ timing ] job ended " << seconds << " s after SIGKILL of worker 1 (status " << status << ")" << std::endl;
}
