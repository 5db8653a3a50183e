// LR schedules equal diffusers' get_scheduler formulas (values worked out by hand from optimization.py).
#include "dreamlora/train/lr_schedule.h"

#include <cmath>

#include "dreamlora/common/error.h"
#include "test_util.h"

using dreamlora::train::lr_multiplier;
using dreamlora::train::LRScheduleOptions;

namespace {
LRScheduleOptions opts(const std::string& name, int64_t warmup, int64_t total) {
  LRScheduleOptions o;
  o.name = name;
  o.warmup_steps = warmup;
  o.total_steps = total;
  return o;
}
}  // namespace

TEST(LRSchedule, ConstantIsOneEverywhere) {
  EXPECT_DOUBLE_EQ(lr_multiplier(opts("constant", 10, 100), 1e-4, 0), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(opts("constant", 10, 100), 1e-4, 99), 1.0);
}

TEST(LRSchedule, WarmupIsLinearFromZero) {
  auto o = opts("constant_with_warmup", 10, 100);
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 5), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 10), 1.0);
}

TEST(LRSchedule, LinearDecaysToZeroAtTheEnd) {
  auto o = opts("linear", 10, 110);
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 60), 0.5);  // (110 - 60) / (110 - 10)
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 110), 0.0);
}

TEST(LRSchedule, CosineUsesHalfACycle) {
  auto o = opts("cosine", 0, 100);
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 50), 0.5, 1e-12);  // 0.5 * (1 + cos(pi * 0.5))
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 25), 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 100), 0.0, 1e-12);
}

TEST(LRSchedule, CosineWithRestartsRestartsEachCycle) {
  auto o = opts("cosine_with_restarts", 0, 100);
  o.num_cycles = 2;
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 0), 1.0, 1e-12);
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 25), 0.5, 1e-12);  // progress 0.25 -> (2 * 0.25) % 1 = 0.5
  EXPECT_NEAR(lr_multiplier(o, 1e-4, 50), 1.0, 1e-12);  // restart
  EXPECT_DOUBLE_EQ(lr_multiplier(o, 1e-4, 100), 0.0);
}

TEST(LRSchedule, PolynomialEndsAtLrEnd) {
  auto o = opts("polynomial", 0, 100);
  o.power = 2.0;
  const double lr = 1e-4;
  // ((lr - 1e-7) * (1 - 50/100)^2 + 1e-7) / lr
  EXPECT_NEAR(lr_multiplier(o, lr, 50), ((lr - 1e-7) * 0.25 + 1e-7) / lr, 1e-12);
  EXPECT_NEAR(lr_multiplier(o, lr, 100), 1e-7 / lr, 1e-12);
  EXPECT_NEAR(lr_multiplier(o, lr, 150), 1e-7 / lr, 1e-12);
}

TEST(LRSchedule, UnknownNameNamesTheFlag) {
  try {
    dreamlora::train::check_lr_schedule_name("cosine-ish");
    FAIL();
  } catch (const dreamlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--scheduler"), std::string::npos);
  }
}
