// Min-SNR weights and the prior-preservation split follow diffusers' training scripts.
#include "dreamlora/train/losses.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

TEST(MinSnr, EpsilonWeightIsMinOfSnrAndGammaOverSnr) {
  auto snr = torch::tensor({0.5f, 5.0f, 20.0f});
  auto w = min_snr_weights(snr, 5.0, "epsilon");
  EXPECT_NEAR(w[0].item<float>(), 1.0f, 1e-6);   // min(0.5, 5) / 0.5
  EXPECT_NEAR(w[1].item<float>(), 1.0f, 1e-6);   // 5 / 5
  EXPECT_NEAR(w[2].item<float>(), 0.25f, 1e-6);  // 5 / 20
  auto v = min_snr_weights(snr, 5.0, "v_prediction");
  EXPECT_NEAR(v[2].item<float>(), 5.0f / 21.0f, 1e-6);  // 5 / (20 + 1)
}

TEST(DreamBoothLoss, PriorPreservationUsesTheSecondHalfOfTheBatch) {
  auto pred = torch::zeros({4, 1, 2, 2});
  auto target = torch::zeros({4, 1, 2, 2});
  target.slice(0, 0, 2).fill_(1.0);  // instance half: error 1
  target.slice(0, 2, 4).fill_(2.0);  // class half: error 4
  auto parts = dreambooth_loss(pred, target, true, 0.5, {});
  EXPECT_FLOAT_EQ(parts.instance.item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(parts.prior.item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(parts.total.item<float>(), 1.0f + 0.5f * 4.0f);
  auto plain = dreambooth_loss(pred, target, false, 0.5, {});
  EXPECT_FLOAT_EQ(plain.total.item<float>(), 2.5f);
  EXPECT_FALSE(plain.prior.defined());
}

TEST(DreamBoothLoss, SnrWeightsScalePerSampleLosses) {
  auto pred = torch::zeros({2, 1, 1, 1});
  auto target = torch::tensor({1.0f, 2.0f}).view({2, 1, 1, 1});
  auto parts = dreambooth_loss(pred, target, false, 1.0, torch::tensor({1.0f, 0.5f}));
  EXPECT_FLOAT_EQ(parts.total.item<float>(), (1.0f * 1.0f + 4.0f * 0.5f) / 2.0f);
}

// diffusers' train_text_to_image: noise = randn; noise += offset * randn(C, 1, 1); new_noise = noise +
// input_perturbation * randn_like(noise); the input uses new_noise, the target the plain noise.
TEST(InputPerturbation, InputNoiseFollowsDiffusersFormulaAndTargetStaysThePlainNoise) {
  auto gen = at::detail::createCPUGenerator(11);
  auto drawn = draw_training_noise({4, 8, 8}, 0.1, 0.2, gen);
  auto ref_gen = at::detail::createCPUGenerator(11);
  auto noise = torch::randn({4, 8, 8}, ref_gen);
  noise = noise + 0.1 * torch::randn({4, 1, 1}, ref_gen);
  auto new_noise = noise + 0.2 * torch::randn({4, 8, 8}, ref_gen);
  EXPECT_TRUE(torch::equal(drawn.target, noise));
  EXPECT_TRUE(torch::equal(drawn.input, new_noise));
  // Off: nothing more is drawn, so runs without it keep their random streams.
  auto off_gen = at::detail::createCPUGenerator(11);
  auto off = draw_training_noise({4, 8, 8}, 0.1, 0.0, off_gen);
  EXPECT_TRUE(torch::equal(off.input, off.target));
  EXPECT_TRUE(torch::equal(off.target, noise));
}

TEST(InputPerturbation, RaisesTheLossOfAPerfectNoisePredictorByThePerturbationSquared) {
  // A model that recovers the input noise exactly has loss E[(p * randn)^2] = p^2 against the target.
  auto gen = at::detail::createCPUGenerator(5);
  auto drawn = draw_training_noise({4, 128, 128}, 0.0, 0.1, gen);
  auto loss = dreambooth_loss(drawn.input.unsqueeze(0), drawn.target.unsqueeze(0), false, 1.0, {});
  EXPECT_NEAR(loss.total.item<double>(), 0.01, 0.0005);
}
