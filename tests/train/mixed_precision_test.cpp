// Mixed precision on CPU: a bf16 UNet LoRA training step (frozen weights bf16; LoRA, gradients, loss and
// optimizer fp32; norms and softmax fp32) against the fp32 step on the tiny-sd fixture, within measured
// tolerances; fp16 where libtorch's CPU kernels allow it; the flags and the fp16-on-CPU refusal.
#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/linear.h"
#include "dreamlora/train/adamw.h"
#include "dreamlora/train/loss_scaler.h"
#include "dreamlora/train/train_config.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;
using dreamlora::testing::fixtures_dir;

namespace {

std::string config_error(const TrainConfig& c) {
  try {
    c.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TrainConfig minimal_config() {
  TrainConfig c;
  c.model = "m";
  c.image_path = "i";
  c.prompt = "a photo of sks dog";
  return c;
}

// The fixture's peft LoRA (lora_A / lora_B per layer) enabled on every layer it names.
void enable_fixture_lora(unet::UNet2DConditionModel& model,
                         const std::map<std::string, torch::Tensor>& peft) {
  const std::string a_suffix = ".lora_A.weight";
  auto modules = model->named_modules();
  for (const auto& [key, a] : peft) {
    if (key.size() < a_suffix.size() ||
        key.compare(key.size() - a_suffix.size(), a_suffix.size(), a_suffix) != 0)
      continue;
    const auto path = key.substr(0, key.size() - a_suffix.size());
    auto* linear = modules[path]->as<nn::LinearWithLoraImpl>();
    ASSERT_NE(linear, nullptr) << path;
    linear->enable_lora({a.size(0), static_cast<double>(a.size(0)), 0.0});
    torch::NoGradGuard no_grad;
    linear->lora->down->weight.copy_(a);
    linear->lora->up->weight.copy_(peft.at(path + ".lora_B.weight"));
  }
}

struct StepResult {
  torch::Tensor out, loss;
  std::vector<std::pair<std::string, torch::Tensor>> grads, weights;  // LoRA, after clip / after AdamW
};

// One training step as the trainer runs it: forward (inputs in the weights' dtype), fp32 MSE, backward
// (fp16: of the loss times the loss scale, then unscaled), clip to norm 1, AdamW at lr 1e-3.
StepResult train_step_in(torch::ScalarType dtype) {
  const auto dir = fixtures_dir() / "tiny-sd";
  auto model = unet::UNet2DConditionModelImpl::load(dir / "unet", "", dtype);
  enable_fixture_lora(model,
                      io::safetensors::File::open(dir / "lora" / "peft_state_dict.safetensors").load_all());
  const auto ref = io::safetensors::File::open(dir / "reference.safetensors").load_all();
  model->train();
  ParamGroup group;
  group.lr = 1e-3;
  for (const auto& item : model->named_parameters()) {
    const bool lora = item.key().find(".lora.") != std::string::npos;
    item.value().set_requires_grad(lora);
    if (lora) group.params.emplace_back(item.key(), item.value());
  }
  AdamW opt({group}, AdamWOptions{});
  StepResult r;
  r.out = model->forward(ref.at("unet.sample").to(dtype), ref.at("unet.timesteps"),
                         ref.at("unet.encoder_hidden_states").to(dtype));
  r.loss = torch::mse_loss(r.out.to(torch::kFloat32), ref.at("lora.grad.target"));
  LossScaler scaler(dtype == torch::kFloat16);
  scaler.scale(r.loss).backward();
  EXPECT_FALSE(scaler.unscale_and_check(opt.gradients()));
  opt.clip_grad_norm(1.0);
  for (const auto& [name, p] : group.params) r.grads.emplace_back(name, p.grad().clone());
  opt.step(1.0);
  for (const auto& [name, p] : group.params) r.weights.emplace_back(name, p.detach().clone());
  return r;
}

// max |a - b| / max |b|
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  return (a64 - b64).abs().max().item<double>() / std::max(b64.abs().max().item<double>(), 1e-30);
}

struct Errors {
  double out = 0, loss = 0, worst_grad = 0, median_grad = 0, flipped_updates = 0;
};

Errors compare(const StepResult& low, const StepResult& ref) {
  Errors e;
  e.out = relative_error(low.out, ref.out);
  e.loss = std::abs(low.loss.item<double>() - ref.loss.item<double>()) / ref.loss.item<double>();
  std::vector<double> grad_errors;
  int64_t flipped = 0, total = 0;
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    EXPECT_EQ(low.grads[i].second.scalar_type(), torch::kFloat32) << low.grads[i].first;
    EXPECT_EQ(low.weights[i].second.scalar_type(), torch::kFloat32) << low.weights[i].first;
    grad_errors.push_back(relative_error(low.grads[i].second, ref.grads[i].second));
    // AdamW's first step moves each weight by about lr * sign(g): an update that differs by more than
    // lr / 2 went the other way (a gradient element near zero whose sign the precision flipped).
    flipped += (low.weights[i].second - ref.weights[i].second).abs().gt(0.5e-3).sum().item<int64_t>();
    total += ref.weights[i].second.numel();
  }
  e.flipped_updates = static_cast<double>(flipped) / static_cast<double>(total);
  std::sort(grad_errors.begin(), grad_errors.end());
  e.worst_grad = grad_errors.back();
  e.median_grad = grad_errors[grad_errors.size() / 2];
  return e;
}

void print(const char* what, const Errors& e) {
  std::cout << "[ " << what << " ] output rel " << e.out << ", loss rel " << e.loss
            << ", LoRA grad rel worst " << e.worst_grad << " median " << e.median_grad
            << ", AdamW updates in the other direction " << e.flipped_updates << std::endl;
}

}  // namespace

TEST(MixedPrecisionConfig, Fp16OnCpuIsRefusedNamingTheFlag) {
  auto c = minimal_config();
  c.mixed_precision = "fp16";
  const auto message = config_error(c);
  EXPECT_NE(message.find("--mixed-precision fp16"), std::string::npos) << message;
  EXPECT_NE(message.find("--device cuda"), std::string::npos) << message;
  c.device = "cuda:0";
  EXPECT_EQ(config_error(c), "");
  c.device = "cpu";
  c.mixed_precision = "bf16";
  EXPECT_EQ(config_error(c), "");
}

TEST(MixedPrecisionConfig, Tf32AndDeterministicAreFlagsWithDiffusersSpelling) {
  EXPECT_EQ(find_train_option("allow_tf32")->name, "allow-tf32");
  EXPECT_TRUE(find_train_option("allow-tf32")->is_switch);
  EXPECT_TRUE(find_train_option("deterministic")->is_switch);
  TrainConfig c;
  find_train_option("allow_tf32")->set(c, "");
  find_train_option("deterministic")->set(c, "true");
  EXPECT_TRUE(c.allow_tf32);
  EXPECT_TRUE(c.deterministic);
  const auto md = options_markdown();
  EXPECT_NE(md.find("`--allow-tf32`"), std::string::npos);
  EXPECT_NE(md.find("`--deterministic`"), std::string::npos);
}

TEST(MixedPrecisionCli, Fp16OnCpuStopsBeforeAnyWork) {
  auto out = dreamlora::testing::make_temp_dir("fp16-cpu");
  auto r = dreamlora::testing::run_dreamlora(
      {"train", "--model", (out / "no-model").string(), "--image-path", (out / "no-images").string(),
       "--prompt", "a photo of sks dog", "--mixed-precision", "fp16", "--output-dir", (out / "o").string()});
  EXPECT_EQ(r.exit_status, 1) << r.output;
  EXPECT_NE(r.output.find("--mixed-precision fp16 needs --device cuda"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out / "o"));
}

TEST(MixedPrecisionParity, Bf16LoraStepMatchesFp32WithinMeasuredTolerance) {
  REQUIRE_FIXTURES();
  const auto ref = train_step_in(torch::kFloat32);
  const auto bf16 = train_step_in(torch::kBFloat16);
  EXPECT_EQ(bf16.out.scalar_type(), torch::kBFloat16);
  const auto e = compare(bf16, ref);
  print("bf16 vs fp32", e);
  // Measured on libtorch 1.13 CPU (2.13 CPU alike, loss 1.3e-5): output 1.6e-2, loss 1.4e-4,
  // gradients median 2.3e-2 / worst 9.3e-2, 1.2 % of first AdamW updates flipped; bounds about twice that.
  EXPECT_LE(e.out, 3e-2);
  EXPECT_LE(e.loss, 1e-3);
  EXPECT_LE(e.median_grad, 5e-2);
  EXPECT_LE(e.worst_grad, 0.2);
  EXPECT_LE(e.flipped_updates, 0.025);
}

TEST(MixedPrecisionParity, Fp16LoraStepMatchesFp32WhereCpuKernelsExist) {
  REQUIRE_FIXTURES();
  const auto ref = train_step_in(torch::kFloat32);
  StepResult fp16;
  try {
    fp16 = train_step_in(torch::kFloat16);
  } catch (const c10::Error& e) {
    const std::string what = e.what();
    GTEST_SKIP() << "fp16 does not run on this libtorch's CPU kernels: " << what.substr(0, what.find('\n'));
  }
  const auto e = compare(fp16, ref);
  print("fp16 vs fp32", e);
  // Measured on libtorch 2.13 CPU (1.13 has no CPU fp16 matmul): output 1.5e-3, loss 3.6e-6, gradients
  // median 2.8e-3 / worst 1.4e-2, 0.19 % of updates flipped. Without the loss scale the gradients
  // underflow: median 5.9e-2, worst 0.95.
  EXPECT_LE(e.out, 3e-3);
  EXPECT_LE(e.loss, 1e-4);
  EXPECT_LE(e.median_grad, 6e-3);
  EXPECT_LE(e.worst_grad, 3e-2);
  EXPECT_LE(e.flipped_updates, 5e-3);
}
