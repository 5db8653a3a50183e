// DDIM and Euler samplers against diffusers' fixtures: timesteps, sigmas, init_noise_sigma and three
// chained steps (scale_model_input, prev_sample, pred_original_sample), for tiny-sd and tiny-sdxl.
#include "dreamlora/schedulers/euler.h"
#include "dreamlora/schedulers/sampler.h"
#include "scheduler_test_util.h"

using namespace dreamlora;
using namespace dreamlora::schedulers;
using dreamlora::testing::expect_rel_near;

namespace {

// Runs steps 0..2 as the fixture generator did: sample_0, then each prev_sample feeds the next step.
void check_three_steps(Sampler& s, const io::safetensors::File& ref, const std::string& prefix) {
  auto sample = ref.get(prefix + ".sample_0");
  for (int i = 0; i < 3; ++i) {
    const std::string p = prefix + ".step" + std::to_string(i);
    const double t = s.timesteps()[i].item<double>();
    expect_rel_near(p + ".model_input", s.scale_model_input(sample, t), ref.get(p + ".model_input"), 1e-6);
    auto out = s.step(ref.get(p + ".model_output"), t, sample);
    expect_rel_near(p + ".prev_sample", out.prev_sample, ref.get(p + ".prev_sample"), 1e-6);
    expect_rel_near(p + ".pred_original_sample", out.pred_original_sample,
                    ref.get(p + ".pred_original_sample"), 1e-6);
    sample = out.prev_sample;
  }
}

class SamplerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(SamplerParity, DDIMMatchesDiffusers) {
  REQUIRE_FIXTURES();
  auto ref = dreamlora::testing::open_reference(GetParam());
  auto s = make_sampler("ddim", dreamlora::testing::scheduler_config_path(GetParam()));
  EXPECT_EQ(s->class_name(), "DDIMScheduler");
  s->set_timesteps(10);
  ASSERT_EQ(s->timesteps().scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(s->timesteps(), ref.get("ddim.timesteps"))) << s->timesteps();
  EXPECT_EQ(s->init_noise_sigma(), 1.0);
  check_three_steps(*s, ref, "ddim");
}

TEST_P(SamplerParity, EulerMatchesDiffusers) {
  REQUIRE_FIXTURES();
  auto ref = dreamlora::testing::open_reference(GetParam());
  auto s = make_sampler("euler", dreamlora::testing::scheduler_config_path(GetParam()));
  s->set_timesteps(10);
  ASSERT_EQ(s->timesteps().scalar_type(), torch::kFloat32);
  expect_rel_near("euler.timesteps", s->timesteps(), ref.get("euler.timesteps"), 1e-6);
  auto& euler = dynamic_cast<EulerDiscreteScheduler&>(*s);
  expect_rel_near("euler.sigmas", euler.sigmas(), ref.get("euler.sigmas"), 1e-6);
  // leading spacing: init_noise_sigma = sqrt(max_sigma^2 + 1)
  const double max_sigma = ref.get("euler.sigmas").max().item<double>();
  EXPECT_NEAR(s->init_noise_sigma(), std::sqrt(max_sigma * max_sigma + 1), 1e-5);
  check_three_steps(*s, ref, "euler");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SamplerParity, ::testing::Values("tiny-sd", "tiny-sdxl"));

}  // namespace
