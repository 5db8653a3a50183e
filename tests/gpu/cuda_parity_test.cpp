// The parity fixtures on a CUDA device (issue #22, run by scripts/gpu-check.sh): text encoder, UNet and VAE
// in fp32 within 1e-4 of diffusers/transformers, a LoRA training step's loss and gradients within 1e-4, and
// the same in bf16 within the tolerances below. Skipped where CUDA is not available;
// DREAMLORA_GPU_TEST_DEVICE=cpu runs the same checks on the CPU (the dry run: proves the test, not CUDA).
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/unet/unet_2d_condition.h"
#include "dreamlora/vae/autoencoder_kl.h"
#include "test_util.h"

namespace dreamlora {
namespace {

using testing::fixtures_dir;

constexpr double kFp32Tol = 1e-4;
// bf16 keeps 8 significant bits: one rounding is 2^-9 relative; a forward pass of a few dozen layers lands
// near 1e-2 relative (norm of the error over norm of the reference). All LoRA gradients together land near
// 2e-2; a single small gradient tensor near 1e-1 (measured on the CPU: 0.11 worst of 96).
constexpr double kBf16OutputTol = 3e-2;
constexpr double kBf16GradTol = 5e-2;
constexpr double kBf16WorstTensorGradTol = 2.5e-1;

torch::Device test_device() {
  const char* env = std::getenv("DREAMLORA_GPU_TEST_DEVICE");
  return torch::Device(env && *env ? env : "cuda");
}

// Skips unless the device is usable; fp32 on CUDA must not silently become TF32 (convolutions default to it).
#define REQUIRE_DEVICE()                                                                      \
  do {                                                                                        \
    REQUIRE_FIXTURES();                                                                       \
    if (test_device().is_cuda() && !torch::cuda::is_available())                              \
      GTEST_SKIP() << "CUDA is not available (DREAMLORA_GPU_TEST_DEVICE=cpu runs it on CPU)"; \
    at::globalContext().setAllowTF32CuDNN(false);                                             \
    at::globalContext().setAllowTF32CuBLAS(false);                                            \
  } while (0)

std::map<std::string, torch::Tensor> reference(const std::string& set) {
  return io::safetensors::File::open(fixtures_dir() / set / "reference.safetensors").load_all();
}

torch::Tensor on(const torch::Tensor& t, torch::Dtype floating = torch::kFloat32) {
  return t.to(test_device(), t.is_floating_point() ? floating : t.scalar_type());
}

// ||a - b|| / ||b||, computed in fp32 on the CPU.
double rel_norm_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.detach().to(torch::kCPU, torch::kFloat32), y = b.to(torch::kCPU, torch::kFloat32);
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

#define EXPECT_REL_NEAR(actual, expected, tol)                                        \
  do {                                                                                \
    const double _err = rel_norm_err((actual), (expected));                           \
    std::cout << "[ parity ] " << #actual << " relative error " << _err << std::endl; \
    EXPECT_LE(_err, (tol)) << #actual;                                                \
  } while (0)

#define EXPECT_NEAR_ON_CPU(actual, expected, tol) \
  EXPECT_TENSOR_NEAR((actual).to(torch::kCPU, torch::kFloat32), expected, tol)

// ---------------------------------------------------------------------------------------------------------
// fp32

TEST(CudaParity, TextEncoderMatchesTransformersInFp32) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  auto te = text::load_clip_text_model(fixtures_dir() / "tiny-sd" / "text_encoder");
  te->to(test_device());
  torch::NoGradGuard no_grad;
  auto out = te->forward(on(ref.at("prompts.input_ids")), /*output_hidden_states=*/true);
  EXPECT_NEAR_ON_CPU(out.last_hidden_state, ref.at("text_encoder.last_hidden_state"), kFp32Tol);
  EXPECT_NEAR_ON_CPU(out.pooler_output, ref.at("text_encoder.pooler_output"), kFp32Tol);
  EXPECT_NEAR_ON_CPU(out.hidden_states[out.hidden_states.size() - 2],
                     ref.at("text_encoder.hidden_states_penultimate"), kFp32Tol);
}

torch::Tensor unet_output(const std::string& set, torch::Dtype dtype,
                          std::map<std::string, torch::Tensor>& ref) {
  const bool sdxl = set == "tiny-sdxl";
  auto unet = unet::UNet2DConditionModelImpl::load(fixtures_dir() / set / "unet");
  unet->to(test_device(), dtype);
  torch::NoGradGuard no_grad;
  return unet->forward(on(ref.at("unet.sample"), dtype), on(ref.at("unet.timesteps")),
                       on(ref.at("unet.encoder_hidden_states"), dtype),
                       sdxl ? on(ref.at("unet.added_cond.text_embeds"), dtype) : torch::Tensor(),
                       sdxl ? on(ref.at("unet.added_cond.time_ids"), dtype) : torch::Tensor());
}

TEST(CudaParity, UNetMatchesDiffusersInFp32) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  EXPECT_NEAR_ON_CPU(unet_output("tiny-sd", torch::kFloat32, ref), ref.at("unet.out"), kFp32Tol);
}

TEST(CudaParity, SdxlUNetWithTextTimeConditioningMatchesDiffusersInFp32) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sdxl");
  EXPECT_NEAR_ON_CPU(unet_output("tiny-sdxl", torch::kFloat32, ref), ref.at("unet.out"), kFp32Tol);
}

TEST(CudaParity, VaeEncodeAndDecodeMatchDiffusersInFp32) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  auto vae = vae::AutoencoderKLImpl::load(fixtures_dir() / "tiny-sd" / "vae");
  vae->to(test_device());
  torch::NoGradGuard no_grad;
  auto posterior = vae->encode(on(ref.at("vae.image")));
  EXPECT_NEAR_ON_CPU(posterior.mean, ref.at("vae.latent_mean"), kFp32Tol);
  EXPECT_NEAR_ON_CPU(posterior.logvar, ref.at("vae.latent_logvar"), kFp32Tol);
  EXPECT_NEAR_ON_CPU(vae->decode(on(ref.at("vae.latent_mean"))), ref.at("vae.decoded"), kFp32Tol);
}

// ---------------------------------------------------------------------------------------------------------
// A LoRA step: the fixture's peft adapter, loss = mse(unet(x), target), backward

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

unet::UNet2DConditionModel unet_with_fixture_lora() {
  auto unet = unet::UNet2DConditionModelImpl::load(fixtures_dir() / "tiny-sd" / "unet");
  auto peft = io::safetensors::File::open(fixtures_dir() / "tiny-sd" / "lora" / "peft_state_dict.safetensors")
                  .load_all();
  auto modules = unet->named_modules();
  const std::string kA = ".lora_A.weight", kB = ".lora_B.weight";
  for (const auto& [key, a] : peft) {
    if (!ends_with(key, kA)) continue;
    const auto path = key.substr(0, key.size() - kA.size());
    auto* linear = modules[path]->as<nn::LinearWithLoraImpl>();
    EXPECT_NE(linear, nullptr) << path;
    if (linear == nullptr) continue;
    linear->enable_lora({a.size(0), static_cast<double>(a.size(0)), 0.0});
    torch::NoGradGuard no_grad;
    linear->lora->down->weight.copy_(a);
    linear->lora->up->weight.copy_(peft.at(path + kB));
  }
  return unet;
}

struct StepResult {
  torch::Tensor loss;
  std::map<std::string, torch::Tensor> grads;  // by peft name (…lora_A.weight / …lora_B.weight)
};

StepResult lora_step(torch::Dtype dtype, bool checkpointing) {
  auto ref = reference("tiny-sd");
  auto unet = unet_with_fixture_lora();
  unet->to(test_device(), dtype);
  unet->train();
  unet->set_gradient_checkpointing(checkpointing);
  auto out = unet->forward(on(ref.at("unet.sample"), dtype), on(ref.at("unet.timesteps")),
                           on(ref.at("unet.encoder_hidden_states"), dtype));
  StepResult r;
  r.loss = torch::mse_loss(out.to(torch::kFloat32), on(ref.at("lora.grad.target")));
  r.loss.backward();
  for (const auto& item : unet->named_parameters()) {
    const auto pos = item.key().find(".lora.");
    if (pos == std::string::npos || !item.value().grad().defined()) continue;
    const auto peft = item.key().substr(0, pos) +
                      (ends_with(item.key(), ".lora.down.weight") ? ".lora_A.weight" : ".lora_B.weight");
    r.grads[peft] = item.value().grad().to(torch::kCPU, torch::kFloat32);
  }
  return r;
}

// Worst over all LoRA parameters of max |g - ref| / max |ref| (the CPU parity test's measure).
double worst_grad_error(const StepResult& r, const std::map<std::string, torch::Tensor>& ref) {
  double worst = 0;
  for (const auto& [name, g] : r.grads) {
    const auto& e = ref.at("lora.all_grads." + name);
    worst =
        std::max(worst, (g - e).abs().max().item<double>() / std::max(e.abs().max().item<double>(), 1e-30));
  }
  return worst;
}

TEST(CudaParity, LoraStepLossAndGradientsMatchPeftInFp32) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  for (bool checkpointing : {false, true}) {
    const auto r = lora_step(torch::kFloat32, checkpointing);
    EXPECT_EQ(r.grads.size(), 96u);
    const double loss_err = std::abs(r.loss.item<double>() - ref.at("lora.grad.loss").item<double>());
    const double grad_err = worst_grad_error(r, ref);
    const std::string tag = checkpointing ? "LoRA step with checkpointing" : "LoRA step";
    std::cout << "[ parity ] " << tag << " loss max abs error " << loss_err << std::endl;
    std::cout << "[ parity ] " << tag << " gradients max relative error " << grad_err << std::endl;
    EXPECT_LE(loss_err, kFp32Tol);
    EXPECT_LE(grad_err, kFp32Tol);
  }
}

// ---------------------------------------------------------------------------------------------------------
// bf16: the whole module in bf16 against the fp32 references

TEST(CudaParity, Bf16TextEncoderUNetAndVaeStayWithinTolerance) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  {
    auto te = text::load_clip_text_model(fixtures_dir() / "tiny-sd" / "text_encoder");
    te->to(test_device(), torch::kBFloat16);
    torch::NoGradGuard no_grad;
    auto out = te->forward(on(ref.at("prompts.input_ids")), false);
    EXPECT_REL_NEAR(out.last_hidden_state, ref.at("text_encoder.last_hidden_state"), kBf16OutputTol);
  }
  EXPECT_REL_NEAR(unet_output("tiny-sd", torch::kBFloat16, ref), ref.at("unet.out"), kBf16OutputTol);
  auto ref_xl = reference("tiny-sdxl");
  EXPECT_REL_NEAR(unet_output("tiny-sdxl", torch::kBFloat16, ref_xl), ref_xl.at("unet.out"), kBf16OutputTol);
  {
    auto vae = vae::AutoencoderKLImpl::load(fixtures_dir() / "tiny-sd" / "vae");
    vae->to(test_device(), torch::kBFloat16);
    torch::NoGradGuard no_grad;
    EXPECT_REL_NEAR(vae->decode(on(ref.at("vae.latent_mean"), torch::kBFloat16)), ref.at("vae.decoded"),
                    kBf16OutputTol);
  }
}

TEST(CudaParity, Bf16LoraStepStaysWithinTolerance) {
  REQUIRE_DEVICE();
  auto ref = reference("tiny-sd");
  const auto r = lora_step(torch::kBFloat16, false);
  EXPECT_EQ(r.grads.size(), 96u);
  EXPECT_REL_NEAR(r.loss, ref.at("lora.grad.loss"), kBf16OutputTol);
  double worst = 0;
  std::vector<torch::Tensor> got, want;
  for (const auto& [name, g] : r.grads) {
    worst = std::max(worst, rel_norm_err(g, ref.at("lora.all_grads." + name)));
    got.push_back(g.flatten());
    want.push_back(ref.at("lora.all_grads." + name).flatten());
  }
  const double all = rel_norm_err(torch::cat(got), torch::cat(want));
  std::cout << "[ parity ] bf16 LoRA gradients (all together) relative error " << all << std::endl;
  std::cout << "[ parity ] bf16 LoRA gradients (worst tensor) relative error " << worst << std::endl;
  EXPECT_LE(all, kBf16GradTol);
  EXPECT_LE(worst, kBf16WorstTensorGradTol);
}

}  // namespace
}  // namespace dreamlora
