// Timesteps for every timestep_spacing and Karras sigmas, against numbers derived by hand from
// diffusers' set_timesteps formulas (numpy semantics: linspace = i * step + start with the end pinned,
// float arange = start + i * step, round half to even). Sigma values: sigma_t = sqrt((1 - ab_t) / ab_t)
// of SD's scaled_linear schedule, each float32 op emulated in double and rounded once.
#include "dreamlora/schedulers/dpm_solver.h"
#include "dreamlora/schedulers/euler.h"
#include "dreamlora/schedulers/noise_schedule.h"
#include "dreamlora/schedulers/sampler.h"
#include "scheduler_test_util.h"

using namespace dreamlora;
using namespace dreamlora::schedulers;

namespace {

// SD1/SDXL schedule (scaled_linear 0.00085 .. 0.012) with the given extra keys.
io::Json sd_schedule_config(const io::Json& extra = io::Json::object()) {
  io::Json j = {{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::vector<int64_t> long_timesteps(const Sampler& s) {
  auto t = s.timesteps().contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}
std::vector<float> float_values(const torch::Tensor& x) {
  auto t = x.contiguous();
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
}

TEST(DDIMTimesteps, LeadingAddsStepsOffsetToMultiplesOfTheRatio) {
  // step_ratio = 1000 // 10 = 100; arange(10) * 100 reversed, + 1
  auto s = make_sampler("ddim", sd_schedule_config({{"timestep_spacing", "leading"}, {"steps_offset", 1}}));
  s->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*s), (std::vector<int64_t>{901, 801, 701, 601, 501, 401, 301, 201, 101, 1}));
}

TEST(DDIMTimesteps, TrailingCountsDownFromTheLastTrainingStep) {
  // round(arange(1000, 0, -100)) - 1
  auto s = make_sampler("ddim", sd_schedule_config({{"timestep_spacing", "trailing"}}));
  s->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*s), (std::vector<int64_t>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
}

TEST(DDIMTimesteps, TrailingRoundsHalvesToEven) {
  // step 62.5: 1000, 937.5, 875, 812.5, ... round half to even: 938, 812, 688, 562, 438, 312, 188, 62; then -
  // 1
  auto s = make_sampler("ddim", sd_schedule_config({{"timestep_spacing", "trailing"}}));
  s->set_timesteps(16);
  EXPECT_EQ(long_timesteps(*s), (std::vector<int64_t>{999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374,
                                                      311, 249, 187, 124, 61}));
}

TEST(DDIMTimesteps, LinspaceSpansZeroTo999) {
  // linspace(0, 999, 10) = multiples of 111, reversed
  auto s = make_sampler("ddim", sd_schedule_config({{"timestep_spacing", "linspace"}}));
  s->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*s), (std::vector<int64_t>{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
}

TEST(EulerTimesteps, LinspaceKeepsFractionalTimestepsAndInterpolatesSigmas) {
  // linspace(0, 999, 7) = i * 166.5 -> 999, 832.5, 666, 499.5, 333, 166.5, 0 (float32, not rounded).
  // sigma(832.5) = (s833 - s832) * 0.5 + s832 with s832 = 5.934703826904297, s833 = 5.963131904602051.
  auto s = make_sampler("euler", sd_schedule_config());  // Euler's default spacing is linspace
  EXPECT_EQ(s->config().timestep_spacing, "linspace");
  s->set_timesteps(7);
  EXPECT_EQ(float_values(s->timesteps()), (std::vector<float>{999, 832.5, 666, 499.5, 333, 166.5, 0}));
  auto sigmas = float_values(dynamic_cast<EulerDiscreteScheduler&>(*s).sigmas());
  const std::vector<float> expected = {
      14.614645004272461f, 5.948917865753174f,  2.9183082580566406f,   1.6155833005905151f,
      0.9323583245277405f, 0.4935535192489624f, 0.029167532920837402f, 0.0f};
  ASSERT_EQ(sigmas.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(sigmas[i], expected[i], 1e-6 * expected[0]) << i;
  // linspace spacing: the initial noise is max sigma itself
  EXPECT_FLOAT_EQ(static_cast<float>(s->init_noise_sigma()), 14.614645004272461f);
}

TEST(EulerTimesteps, TrailingIsFloatAndEndsAt99) {
  auto s = make_sampler("euler", sd_schedule_config({{"timestep_spacing", "trailing"}}));
  s->set_timesteps(10);
  EXPECT_EQ(float_values(s->timesteps()),
            (std::vector<float>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
}

TEST(EulerKarras, SigmasFollowKarrasRhoSevenBetweenTheScheduledEnds) {
  // leading + offset 1 with 5 steps: timesteps 801, 601, 401, 201, 1, so the Karras range is
  // [sigma(1), sigma(801)]; sigma_i = (max^(1/7) + i/4 * (min^(1/7) - max^(1/7)))^7.
  auto s = make_sampler("euler-karras",
                        sd_schedule_config({{"timestep_spacing", "leading"}, {"steps_offset", 1}}));
  s->set_timesteps(5);
  auto sigmas = float_values(dynamic_cast<EulerDiscreteScheduler&>(*s).sigmas());
  const std::vector<float> expected = {5.134433269500732f,   2.0248067378997803f,  0.6921505928039551f,
                                       0.19469328224658966f, 0.04131447896361351f, 0.0f};
  ASSERT_EQ(sigmas.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(sigmas[i], expected[i], 1e-6 * expected[0]) << i;
  // Timesteps map each sigma back onto the log-sigma table (fractional, float32).
  const std::vector<float> t_expected = {801.0f, 565.8302001953125f, 248.59303283691406f, 38.422298431396484f,
                                         1.0f};
  auto ts = float_values(s->timesteps());
  for (size_t i = 0; i < t_expected.size(); ++i) EXPECT_NEAR(ts[i], t_expected[i], 1e-3) << i;
}

TEST(DPMSolverTimesteps, EverySpacingDropsTheFinalZero) {
  // linspace(0, 999, 11) rounded = 0, 100, 200, 300, 400, 500 (499.5 -> even), 599, ...; reversed, last
  // dropped.
  auto lin = make_sampler("dpmpp-2m", sd_schedule_config({{"timestep_spacing", "linspace"}}));
  lin->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*lin), (std::vector<int64_t>{999, 899, 799, 699, 599, 500, 400, 300, 200, 100}));
  // leading: step_ratio = 1000 // 11 = 90; i * 90 for i = 10..1, + 1
  auto lead =
      make_sampler("dpmpp-2m", sd_schedule_config({{"timestep_spacing", "leading"}, {"steps_offset", 1}}));
  lead->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*lead), (std::vector<int64_t>{901, 811, 721, 631, 541, 451, 361, 271, 181, 91}));
  auto trail = make_sampler("dpmpp-2m", sd_schedule_config({{"timestep_spacing", "trailing"}}));
  trail->set_timesteps(10);
  EXPECT_EQ(long_timesteps(*trail), (std::vector<int64_t>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
}

TEST(DPMSolverKarras, SigmasSpanTheWholeTrainingRange) {
  // DPM-Solver takes the Karras range from all training sigmas: [sigma(0), sigma(999)]
  // = [0.029167532920837402, 14.614645004272461]; timesteps = round(sigma_to_t(sigma_i)).
  auto s = make_sampler("dpmpp-2m-karras", sd_schedule_config());
  s->set_timesteps(5);
  auto sigmas = float_values(dynamic_cast<DPMSolverMultistepScheduler&>(*s).sigmas());
  const std::vector<float> expected = {14.614645004272461f, 4.796543121337891f,    1.274105191230774f,
                                       0.2479516863822937f, 0.029167532920837402f, 0.0f};
  ASSERT_EQ(sigmas.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(sigmas[i], expected[i], 1e-6 * expected[0]) << i;
  EXPECT_EQ(long_timesteps(*s), (std::vector<int64_t>{999, 786, 427, 59, 0}));
}

TEST(NumpyHelpers, ArangeAndLinspaceFollowNumpy) {
  EXPECT_EQ(np::arange(1000, 0, -62.5).size(), 16u);
  EXPECT_EQ(np::arange(0, 1, 0.5), (std::vector<double>{0, 0.5}));
  EXPECT_EQ(np::linspace(0, 999, 1), (std::vector<double>{0}));
  auto l = np::linspace(0, 999, 11);
  EXPECT_EQ(l[3], 3 * 99.9);  // i * step, not i * 999 / 10
  EXPECT_EQ(l[10], 999.0);
  EXPECT_EQ(np::round(2.5), 2.0);
  EXPECT_EQ(np::round(3.5), 4.0);
  EXPECT_EQ(np::interp({-1, 0.25, 2, 5}, {1, 2, 4}), (std::vector<double>{1, 1.25, 4, 4}));
}

}  // namespace
