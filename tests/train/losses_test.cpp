// Min-SNR weights and the prior-preservation split follow diffusers' training scripts.
#include "dreamlora/train/losses.h"

#include <torch/torch.h>

#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

TEST(MinSnr, EpsilonWeightIsMinOfSnrAndGammaOverSnr) {
  auto snr = torch::tensor({0.5f, 5.0f, 20.0f});
  auto w = min_snr_weights(snr, 5.0, "epsilon");
  EXPECT_NEAR(w[0].item<float>(), 1.0f, 1e-6);          // min(0.5, 5) / 0.5
  EXPECT_NEAR(w[1].item<float>(), 1.0f, 1e-6);          // 5 / 5
  EXPECT_NEAR(w[2].item<float>(), 0.25f, 1e-6);         // 5 / 20
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
