// Data-parallel training on c10d/Gloo over loopback, through `dreamlora launch`: two workers of batch 1
// equal one worker of batch 2; checkpoints move between world sizes; SIGTERM stops every worker at one
// step with one valid checkpoint; a killed worker ends the job within --dist-timeout; a terminal's Ctrl-C
// makes one checkpoint; a validation longer than --dist-timeout is waited for; workers that resumed from
// different steps refuse to train.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <thread>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/synth/demo_data.h"
#include "dreamlora/synth/tiny_model.h"
#include "dreamlora/train/launcher.h"
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
    dreamlora::synth::write_tiny_model(w.model, {});
    dreamlora::synth::write_demo_subject_images(w.images, 4, 40, 2);
    return w;
  }();
  return w;
}

std::vector<std::string> train(const fs::path& out, int batch, int steps) {
  return {"--threads",
          "1",
          "train",
          "--model",
          dist_world().model.string(),
          "--image-path",
          dist_world().images.string(),
          "--prompt",
          "a photo of sks toy",
          "--resolution",
          "32",
          "--num-steps",
          std::to_string(steps),
          "--batch-size",
          std::to_string(batch),
          "--checkpointing-steps",
          "2",
          "--lr",
          "1e-3",
          "--output-dir",
          out.string(),
          "--dist-timeout",
          "20"};
}

std::vector<std::string> launch(int n, const std::vector<std::string>& worker) {
  std::vector<std::string> a = {"launch", "--nproc-per-node", std::to_string(n), "--grace", "5", "--"};
  a.insert(a.end(), worker.begin(), worker.end());
  return a;
}

// Starts dreamlora in a process group of its own, as a shell starts a foreground job: kill(-pid, SIGINT)
// then is what a terminal's Ctrl-C does.
int spawn_as_terminal_job(const std::vector<std::string>& args, const fs::path& output_file) {
  const std::string bin = dreamlora_binary().string();
  std::vector<char*> argv{const_cast<char*>(bin.c_str())};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

std::vector<int64_t> checkpoint_steps(const fs::path& out) {
  std::vector<int64_t> steps;
  for (const auto& e : fs::directory_iterator(out))
    if (auto step = dreamlora::checkpoint::parse_checkpoint_dir_name(e.path().filename().string()))
      steps.push_back(*step);
  std::sort(steps.begin(), steps.end());
  return steps;
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

std::vector<std::string> with_flags(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// args with `flag value` set: replaced where present, appended otherwise.
std::vector<std::string> with_flag(std::vector<std::string> args, const std::string& flag,
                                   const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == flag) {
      args[i + 1] = value;
      return args;
    }
  return with_flags(args, {flag, value});
}

bool has_exited(int pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

double max_lora_difference(const fs::path& a, const fs::path& b) {
  auto fa = dreamlora::io::safetensors::File::open(a), fb = dreamlora::io::safetensors::File::open(b);
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
  double diff =
      max_lora_difference(one / "pytorch_lora_weights.safetensors", two / "pytorch_lora_weights.safetensors");
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
  EXPECT_LE(max_lora_difference(reference / "pytorch_lora_weights.safetensors",
                                moved / "pytorch_lora_weights.safetensors"),
            1e-5);
}

TEST(Distributed, SigtermStopsAllWorkersWithOneValidCheckpoint) {
  auto out = make_temp_dir("dist-term");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  int pid = spawn_dreamlora(launch(2, train(out, 1, 400)), log);
  for (int i = 0; i < 900 && !fs::exists(out / "checkpoint-2"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
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
  for (int i = 0; i < 900 && !fs::exists(out / "checkpoint-2"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
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
  std::cout << "[ timing ] job ended " << seconds << " s after SIGKILL of worker 1 (status " << status << ")"
            << std::endl;
}

TEST(Distributed, CtrlCOnTheLaunchersTerminalWritesOneCheckpointAndResumes) {
  auto out = make_temp_dir("dist-ctrlc");
  auto log = out.parent_path() / (out.filename().string() + ".log");
  // No periodic checkpoints: the only one is the one the Ctrl-C asks for.
  auto worker = with_flag(train(out, 1, 400), "--checkpointing-steps", "1000");
  int pid = spawn_as_terminal_job(launch(2, worker), log);
  for (int i = 0; i < 900 && read_text(out / "metrics.jsonl").empty() && !has_exited(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_FALSE(read_text(out / "metrics.jsonl").empty()) << read_text(log);
  kill(-pid, SIGINT);  // the terminal signals its whole foreground process group
  const int status = wait_process(pid);
  const std::string text = read_text(log);
  EXPECT_EQ(status, 75) << text;
  EXPECT_EQ(count_of(text, "dreamlora: SIGINT, finishing this step"), 2u) << text;  // once per worker
  EXPECT_EQ(count_of(text, "second SIGINT"), 0u) << text;
  auto steps = checkpoint_steps(out);
  ASSERT_EQ(steps.size(), 1u) << text;
  EXPECT_TRUE(dreamlora::checkpoint::verify_checkpoint(out / ("checkpoint-" + std::to_string(steps[0]))).ok);
  std::cout << "[ signal ] one Ctrl-C: launcher status " << status << ", one checkpoint at step " << steps[0]
            << std::endl;

  auto again = run_dreamlora(launch(2, with_flag(worker, "--num-steps", std::to_string(steps[0] + 2))));
  ASSERT_EQ(again.exit_status, 0) << again.output;
  EXPECT_NE(again.output.find("resumed from"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(out / "pytorch_lora_weights.safetensors"));
}

TEST(Distributed, WorkersWaitForAValidationLongerThanTheTimeout) {
  auto out = make_temp_dir("dist-slow-validation");
  auto worker = with_flags(with_flag(train(out, 1, 4), "--dist-timeout", "5"),
                           {"--validation-prompt", "a photo of sks toy", "--validation-steps", "4",
                            "--num-validation-images", "1", "--validation-inference-steps", "2"});
  auto t0 = std::chrono::steady_clock::now();
  auto run = run_dreamlora(launch(2, worker), {"DREAMLORA_TEST_VALIDATION_DELAY_S=10"});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(run.exit_status, 0) << run.output;
  EXPECT_TRUE(fs::exists(out / "validation" / "step-4-0.png")) << run.output;
  EXPECT_TRUE(fs::exists(out / "pytorch_lora_weights.safetensors"));
  std::cout << "[ timing ] a 10 s validation under --dist-timeout 5: job finished in " << seconds << " s"
            << std::endl;
}

TEST(Distributed, WorkersThatResumedFromDifferentStepsRefuseToTrain) {
  // Two machines without shared storage: worker 0 finds a checkpoint, worker 1 an empty folder.
  auto with_checkpoint = make_temp_dir("dist-step-a"), empty = make_temp_dir("dist-step-b");
  ASSERT_EQ(run_dreamlora(train(with_checkpoint, 2, 2)).exit_status, 0);
  const std::string port = std::to_string(dreamlora::train::free_loopback_port());
  std::vector<std::string> common = {"WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port};
  auto log0 = with_checkpoint.parent_path() / (with_checkpoint.filename().string() + ".log");
  auto log1 = empty.parent_path() / (empty.filename().string() + ".log");
  int pid0 =
      spawn_dreamlora(train(with_checkpoint, 1, 4), log0, with_flags(common, {"RANK=0", "LOCAL_RANK=0"}));
  int pid1 = spawn_dreamlora(train(empty, 1, 4), log1, with_flags(common, {"RANK=1", "LOCAL_RANK=1"}));
  EXPECT_EQ(wait_process(pid0), 1) << read_text(log0);
  EXPECT_EQ(wait_process(pid1), 1) << read_text(log1);
  for (const auto& log : {log0, log1})
    EXPECT_NE(read_text(log).find("the step resumed from differs between ranks"), std::string::npos)
        << read_text(log);
  EXPECT_FALSE(fs::exists(with_checkpoint / "checkpoint-4"));  // no step was trained
}
