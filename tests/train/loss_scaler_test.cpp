// The fp16 loss scaler follows torch.cuda.amp.GradScaler: init 65536, x0.5 and a skipped step on inf/nan,
// x2 after 2000 good steps in a row, unscaling that is exact for the power-of-two scales, and a state
// that round-trips through the checkpoint's optimizer metadata.
#include "dreamlora/train/loss_scaler.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "dreamlora/common/error.h"
#include "dreamlora/io/safetensors.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

TEST(LossScaler, StartsAtGradScalersDefaultsAndScalesTheLoss) {
  LossScaler s(true);
  EXPECT_EQ(s.scale_value(), 65536.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  EXPECT_EQ(s.scale(torch::tensor(0.25f)).item<float>(), 16384.0f);
}

TEST(LossScaler, UnscalesExactlyAndFindsNoOverflowInFiniteGradients) {
  LossScaler s(true);
  auto g1 = torch::randn({5, 3}), g2 = torch::randn({7});
  auto e1 = g1.clone(), e2 = g2.clone();
  g1.mul_(65536.0);
  g2.mul_(65536.0);
  EXPECT_FALSE(s.unscale_and_check({g1, g2}));
  EXPECT_TRUE(torch::equal(g1, e1));  // power-of-two scale: bit-exact
  EXPECT_TRUE(torch::equal(g2, e2));
}

TEST(LossScaler, InfOrNanInAnyGradientIsAnOverflow) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    LossScaler s(true);
    auto g1 = torch::ones({4}), g2 = torch::ones({2, 2});
    g2[1][0] = bad;
    EXPECT_TRUE(s.unscale_and_check({g1, g2})) << bad;
  }
}

TEST(LossScaler, BacksOffOnOverflowAndGrowsAfterTheIntervalOfGoodSteps) {
  LossScaler s(true);
  s.update(true);  // overflow: halve, restart the count
  EXPECT_EQ(s.scale_value(), 32768.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  for (int i = 0; i < 1999; ++i) s.update(false);
  EXPECT_EQ(s.scale_value(), 32768.0f);
  EXPECT_EQ(s.growth_tracker(), 1999);
  s.update(false);  // the 2000th good step in a row doubles
  EXPECT_EQ(s.scale_value(), 65536.0f);
  EXPECT_EQ(s.growth_tracker(), 0);
  for (int i = 0; i < 1500; ++i) s.update(false);
  s.update(true);  // an overflow restarts the count
  EXPECT_EQ(s.scale_value(), 32768.0f);
  for (int i = 0; i < 1999; ++i) s.update(false);
  EXPECT_EQ(s.scale_value(), 32768.0f);
}

TEST(LossScaler, NeverGrowsToInfinity) {
  LossScalerOptions o;
  o.init_scale = std::ldexp(1.0f, 127);
  o.growth_interval = 1;
  LossScaler s(true, o);
  s.update(false);
  EXPECT_EQ(s.scale_value(), std::ldexp(1.0f, 127));  // 2^128 is inf in float: kept, as GradScaler
  EXPECT_EQ(s.growth_tracker(), 0);
}

TEST(LossScaler, DisabledIsTheIdentity) {
  LossScaler s(false);
  auto loss = torch::tensor(0.5f);
  EXPECT_TRUE(s.scale(loss).is_same(loss));
  auto g = torch::full({2}, std::numeric_limits<float>::infinity());
  EXPECT_FALSE(s.unscale_and_check({g}));
  EXPECT_TRUE(s.to_metadata().empty());
}

TEST(LossScaler, StateRoundTripsThroughTheOptimizerFileMetadata) {
  LossScaler s(true);
  s.update(true);
  s.update(true);
  for (int i = 0; i < 123; ++i) s.update(false);
  auto dir = dreamlora::testing::make_temp_dir("scaler");
  auto meta = s.to_metadata();
  meta["step"] = "125";
  io::safetensors::save(dir / "optimizer.safetensors",
                        io::safetensors::NamedTensors{{"x.exp_avg", torch::zeros({2})}}, meta);

  LossScaler restored(true);
  restored.load_metadata(io::safetensors::File::open(dir / "optimizer.safetensors").metadata(),
                         "optimizer.safetensors");
  EXPECT_EQ(restored.scale_value(), 16384.0f);
  EXPECT_EQ(restored.growth_tracker(), 123);
  // ... and continues the same schedule: 2000 - 123 more good steps double it.
  for (int i = 0; i < 1877; ++i) restored.update(false);
  EXPECT_EQ(restored.scale_value(), 32768.0f);
}

TEST(LossScaler, ACheckpointWithoutTheScaleIsRefusedByAnFp16Run) {
  LossScaler s(true);
  try {
    s.load_metadata({{"step", "3"}}, "out/checkpoint-3/optimizer.safetensors");
    FAIL() << "no error";
  } catch (const dreamlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out/checkpoint-3/optimizer.safetensors"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("loss_scale"), std::string::npos) << e.what();
  }
}
