// DDPMScheduler: beta/alpha tables, add_noise and get_velocity against diffusers' fixtures; SNR and the
// other beta schedules against values derived by hand from diffusers' formulas.
#include "dreamlora/schedulers/ddpm.h"

#include <cmath>

#include "dreamlora/schedulers/noise_schedule.h"
#include "scheduler_test_util.h"

using namespace dreamlora;
using namespace dreamlora::schedulers;
using dreamlora::testing::expect_rel_near;

namespace {

class DDPMParity : public ::testing::TestWithParam<std::string> {};

TEST_P(DDPMParity, TablesAddNoiseAndVelocityMatchDiffusers) {
  REQUIRE_FIXTURES();
  auto ref = dreamlora::testing::open_reference(GetParam());
  auto ddpm = DDPMScheduler::from_file(dreamlora::testing::scheduler_config_path(GetParam()));
  EXPECT_EQ(ddpm.num_train_timesteps(), 1000);
  EXPECT_EQ(ddpm.prediction_type(), "epsilon");
  expect_rel_near("ddpm.betas", ddpm.betas(), ref.get("ddpm.betas"), 1e-6);
  expect_rel_near("ddpm.alphas_cumprod", ddpm.alphas_cumprod(), ref.get("ddpm.alphas_cumprod"), 1e-6);

  auto original = ref.get("ddpm.add_noise.original");
  auto noise = ref.get("ddpm.add_noise.noise");
  auto timesteps = ref.get("ddpm.add_noise.timesteps");
  expect_rel_near("ddpm.add_noise.noisy", ddpm.add_noise(original, noise, timesteps),
                  ref.get("ddpm.add_noise.noisy"), 1e-6);
  expect_rel_near("ddpm.get_velocity", ddpm.get_velocity(original, noise, timesteps),
                  ref.get("ddpm.get_velocity"), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DDPMParity, ::testing::Values("tiny-sd", "tiny-sdxl"));

SchedulerConfig ddpm_config(const io::Json& j) {
  return SchedulerConfig::from_json(j, kDDPM, "test");
}

TEST(DDPMScheduler, SnrIsAlphaBarOverOneMinusAlphaBar) {
  DDPMScheduler ddpm(
      ddpm_config({{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}}));
  auto t = torch::tensor({0, 10, 500, 999}, torch::kInt64);
  auto snr = ddpm.snr(t);
  ASSERT_EQ(snr.scalar_type(), torch::kFloat32);
  auto ac = ddpm.alphas_cumprod().index({t}).to(torch::kFloat64);
  expect_rel_near("snr", snr, ac / (1 - ac), 1e-5);
  // Monotone: noise grows with t.
  EXPECT_GT(snr[0].item<float>(), snr[1].item<float>());
  EXPECT_GT(snr[2].item<float>(), snr[3].item<float>());
}

TEST(DDPMScheduler, TrainingTargetFollowsPredictionType) {
  auto latents = torch::randn({2, 4, 3, 3});
  auto noise = torch::randn({2, 4, 3, 3});
  auto t = torch::tensor({5, 700}, torch::kInt64);
  DDPMScheduler eps(ddpm_config({{"prediction_type", "epsilon"}}));
  EXPECT_TRUE(torch::equal(eps.training_target(latents, noise, t), noise));
  DDPMScheduler v(ddpm_config({{"prediction_type", "v_prediction"}}));
  EXPECT_TRUE(torch::equal(v.training_target(latents, noise, t), v.get_velocity(latents, noise, t)));
  DDPMScheduler x0(ddpm_config({{"prediction_type", "sample"}}));
  EXPECT_TRUE(torch::equal(x0.training_target(latents, noise, t), latents));
}

TEST(DDPMScheduler, LinearBetasAreEvenlySpaced) {
  DDPMScheduler ddpm(ddpm_config(io::Json::object()));  // DDPM defaults: linear 1e-4 .. 2e-2
  auto b = ddpm.betas();
  EXPECT_FLOAT_EQ(b[0].item<float>(), 1e-4f);
  EXPECT_FLOAT_EQ(b[999].item<float>(), 0.02f);
  // linspace step = (0.02 - 1e-4) / 999
  EXPECT_NEAR(b[500].item<float>(), 1e-4 + 500 * (0.02 - 1e-4) / 999, 1e-8);
}

TEST(DDPMScheduler, CosineBetasMatchHandDerivedValues) {
  // betas_for_alpha_bar: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999),
  // abar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2, evaluated in double then rounded to float32.
  DDPMScheduler ddpm(ddpm_config({{"beta_schedule", "squaredcos_cap_v2"}}));
  auto b = ddpm.betas();
  EXPECT_EQ(b[0].item<float>(), 4.128422369831242e-05f);
  EXPECT_EQ(b[1].item<float>(), 4.614175122696906e-05f);
  EXPECT_EQ(b[500].item<float>(), 0.003155691549181938f);
  EXPECT_EQ(b[998].item<float>(), 0.7499994039535522f);
  EXPECT_EQ(b[999].item<float>(), 0.999f);  // capped at max_beta
}

TEST(DDPMScheduler, ZeroTerminalSnrRescaleEndsAtPureNoise) {
  auto plain =
      ddpm_config({{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}});
  auto rescaled = plain;
  rescaled.rescale_betas_zero_snr = true;
  DDPMScheduler a(plain), b(rescaled);
  EXPECT_EQ(b.alphas_cumprod()[999].item<float>(), 0.0f);
  EXPECT_EQ(b.snr(torch::tensor({999}, torch::kInt64))[0].item<float>(), 0.0f);
  // The first alpha_bar keeps its value (the rescale maps sqrt(ab_0) to itself).
  EXPECT_NEAR(b.alphas_cumprod()[0].item<float>(), a.alphas_cumprod()[0].item<float>(), 1e-6);
  EXPECT_LT(b.alphas_cumprod()[500].item<float>(), a.alphas_cumprod()[500].item<float>());
}

TEST(DDPMScheduler, TrainedBetasAreUsedVerbatim) {
  std::vector<double> betas(10);
  for (int i = 0; i < 10; ++i) betas[i] = 0.01 * (i + 1);
  DDPMScheduler ddpm(ddpm_config({{"num_train_timesteps", 10}, {"trained_betas", betas}}));
  EXPECT_FLOAT_EQ(ddpm.betas()[3].item<float>(), 0.04f);
  EXPECT_NEAR(ddpm.alphas_cumprod()[1].item<float>(), 0.99 * 0.98, 1e-6);
}

TEST(DDPMScheduler, AddNoiseRejectsMismatchedBatch) {
  DDPMScheduler ddpm(ddpm_config(io::Json::object()));
  EXPECT_THROW(
      ddpm.add_noise(torch::zeros({2, 4, 2, 2}), torch::zeros({2, 4, 2, 2}), torch::tensor({1, 2, 3})),
      dreamlora::Error);
}

}  // namespace
