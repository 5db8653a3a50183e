// Per-sample randomness (train/sample_draws): the draws of sample n of a stream are a pure function of
// (seed, stream, n), whatever was drawn before, and come in a fixed order from that sample's generator.
#include "dreamlora/train/sample_draws.h"

#include <torch/torch.h>

#include "gtest/gtest.h"

using namespace dreamlora;
using namespace dreamlora::train;

namespace {

NoiseDraws draws_of(uint64_t seed, uint64_t stream, int64_t n, double noise_offset = 0) {
  auto gen = sample_generator(seed, stream, n);
  return draw_noise(gen, {4, 8, 8}, {noise_offset, 1000});
}

bool same_draws(const NoiseDraws& a, const NoiseDraws& b) {
  return torch::equal(a.eps, b.eps) && torch::equal(a.noise, b.noise) && a.timestep == b.timestep;
}

}  // namespace

TEST(SampleDraws, AreAPureFunctionOfSeedStreamAndIndex) {
  const auto first = draws_of(7, kInstanceStream, 5);
  // Other samples drawn in between (another batch size, another worker's share) change nothing.
  for (int64_t n = 0; n < 5; ++n) draws_of(7, kInstanceStream, n);
  torch::randn({16});  // nor does the default generator
  EXPECT_TRUE(same_draws(first, draws_of(7, kInstanceStream, 5)));
}

TEST(SampleDraws, DifferBySeedStreamAndIndex) {
  const auto base = draws_of(7, kInstanceStream, 5);
  EXPECT_FALSE(same_draws(base, draws_of(8, kInstanceStream, 5)));
  EXPECT_FALSE(same_draws(base, draws_of(7, kClassStream, 5)));
  EXPECT_FALSE(same_draws(base, draws_of(7, kInstanceStream, 6)));
}

TEST(SampleDraws, ComeInTheOrderEpsNoiseOffsetTimestep) {
  auto gen = sample_generator(3, kClassStream, 11);
  const auto eps = torch::randn({4, 8, 8}, gen);
  const auto noise = torch::randn({4, 8, 8}, gen);
  const auto offset = torch::randn({4, 1, 1}, gen);
  const auto timestep = torch::randint(0, 1000, {1}, gen).item<int64_t>();
  const auto d = draws_of(3, kClassStream, 11, 0.1);
  EXPECT_TRUE(torch::equal(d.eps, eps));
  EXPECT_TRUE(torch::equal(d.noise, noise + 0.1 * offset));
  EXPECT_EQ(d.timestep, timestep);
}

TEST(SampleDraws, WithoutNoiseOffsetDrawNoOffset) {
  auto gen = sample_generator(3, kClassStream, 11);
  torch::randn({4, 8, 8}, gen);
  torch::randn({4, 8, 8}, gen);
  const auto timestep = torch::randint(0, 1000, {1}, gen).item<int64_t>();
  EXPECT_EQ(draws_of(3, kClassStream, 11, 0.0).timestep, timestep);
}

TEST(SampleDraws, TimestepsStayBelowTheScheduleLength) {
  for (int64_t n = 0; n < 64; ++n) {
    auto gen = sample_generator(1, kInstanceStream, n);
    const auto t = draw_noise(gen, {1, 2, 2}, {0, 10}).timestep;
    EXPECT_GE(t, 0);
    EXPECT_LT(t, 10);
  }
}
