// Behaviour every sampler must have: with an oracle model (one that predicts the true noise of a known
// clean sample) the loop ends at that sample; ancestral noise comes from the given generator; the
// factory and config parsing pick each class's defaults and reject what is not implemented.
#include <ATen/CPUGeneratorImpl.h>

#include "dreamlora/schedulers/dpm_solver.h"
#include "dreamlora/schedulers/euler.h"
#include "dreamlora/schedulers/sampler.h"
#include "scheduler_test_util.h"

using namespace dreamlora;
using namespace dreamlora::schedulers;

namespace {

io::Json sd_config(const io::Json& extra = io::Json::object()) {
  io::Json j = {{"beta_schedule", "scaled_linear"}, {"beta_start", 0.00085}, {"beta_end", 0.012},
                {"timestep_spacing", "leading"},    {"steps_offset", 1},     {"clip_sample", false},
                {"set_alpha_to_one", false}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

// The sigma the sampler uses at step i (VE form: sigma^2 = (1 - ab) / ab).
double current_sigma(const Sampler& s, int64_t i, double t) {
  if (auto* e = dynamic_cast<const EulerSamplerBase*>(&s)) return e->sigmas()[i].item<double>();
  if (auto* d = dynamic_cast<const DPMSolverMultistepScheduler*>(&s)) return d->sigmas()[i].item<double>();
  const double ab = s.alphas_cumprod()[static_cast<int64_t>(t)].item<double>();
  return std::sqrt((1 - ab) / ab);
}

// The epsilon that makes x0 the exact clean estimate: every sampler's model input is
// a * x0 + b * eps with a = 1 / sqrt(sigma^2 + 1), b = sigma * a.
torch::Tensor oracle_epsilon(const torch::Tensor& model_input, const torch::Tensor& x0, double sigma) {
  const double a = 1 / std::sqrt(sigma * sigma + 1), b = sigma * a;
  return ((model_input.to(torch::kFloat64) - a * x0.to(torch::kFloat64)) / b).to(torch::kFloat32);
}

class OracleLoop : public ::testing::TestWithParam<std::string> {};

TEST_P(OracleLoop, EndsAtTheCleanSample) {
  auto s = make_sampler(GetParam(), sd_config());
  s->set_timesteps(12);
  auto gen = at::detail::createCPUGenerator(42);
  auto x0 = torch::rand({1, 4, 8, 8}, gen) * 2 - 1;
  auto latents = torch::randn({1, 4, 8, 8}, gen) * s->init_noise_sigma();
  StepOutput out;
  for (int64_t i = 0; i < s->timesteps().size(0); ++i) {
    const double t = s->timesteps()[i].item<double>();
    auto in = s->scale_model_input(latents, t);
    out = s->step(oracle_epsilon(in, x0, current_sigma(*s, i, t)), t, latents, gen);
    latents = out.prev_sample;
  }
  const double x0_err = (out.pred_original_sample - x0).abs().max().item<double>();
  const double end_err = (latents - x0).abs().max().item<double>();
  std::cout << "[ oracle ] " << GetParam() << " |x0_pred - x0| = " << x0_err << ", |x_end - x0| = " << end_err
            << std::endl;
  EXPECT_LE(x0_err, 1e-3);
  // DDIM (set_alpha_to_one false) stops at timestep 0, sqrt(1 - ab_0) = 0.029 of noise away from x0;
  // the sigma-space samplers end at sigma 0.
  EXPECT_LE(end_err, GetParam() == "ddim" ? 0.2 : 1e-3);
}

INSTANTIATE_TEST_SUITE_P(AllSamplers, OracleLoop,
                         ::testing::Values("ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras",
                                           "euler-karras"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(EulerAncestral, NoiseComesFromTheGivenGenerator) {
  auto run = [](uint64_t seed) {
    auto s = make_sampler("euler-a", sd_config());
    s->set_timesteps(4);
    auto gen = at::detail::createCPUGenerator(seed);
    auto sample = torch::ones({1, 4, 4, 4}) * s->init_noise_sigma();
    const double t = s->timesteps()[0].item<double>();
    s->scale_model_input(sample, t);
    return s->step(torch::zeros({1, 4, 4, 4}), t, sample, gen).prev_sample;
  };
  EXPECT_TRUE(torch::equal(run(1), run(1)));
  EXPECT_FALSE(torch::equal(run(1), run(2)));
}

TEST(DPMSolver, SecondStepUsesTheSecondOrderUpdate) {
  // With a constant x0 prediction the 2M correction term D1 = (m0 - m1) / r0 vanishes, so 1st and 2nd
  // order give the same x; with a changing prediction they differ.
  auto first = make_sampler("dpmpp-2m", sd_config({{"solver_order", 1}}));
  auto second = make_sampler("dpmpp-2m", sd_config());
  for (auto* s : {first.get(), second.get()}) s->set_timesteps(5);
  auto sample = torch::full({1, 1, 2, 2}, 3.0);
  auto x_a = sample, x_b = sample;
  for (int i = 0; i < 2; ++i) {
    const double t = first->timesteps()[i].item<double>();
    auto eps = torch::full({1, 1, 2, 2}, 0.5 + i);  // changes between the steps
    x_a = first->step(eps, t, x_a).prev_sample;
    x_b = second->step(eps, t, x_b).prev_sample;
  }
  EXPECT_FALSE(torch::allclose(x_a, x_b));
}

TEST(SamplerFactory, UnknownNameListsTheKnownOnes) {
  try {
    make_sampler("plms", sd_config());
    FAIL() << "expected an error";
  } catch (const dreamlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("dpmpp-2m"), std::string::npos) << e.what();
  }
}

TEST(SamplerFactory, StepRejectsATimestepNotScheduled) {
  auto s = make_sampler("euler", sd_config());
  s->set_timesteps(10);
  EXPECT_THROW(s->scale_model_input(torch::zeros({1, 4, 2, 2}), 500.25), dreamlora::Error);
}

TEST(SchedulerConfig, EachClassGetsItsOwnDefaults) {
  io::Json bare = io::Json::object();
  EXPECT_EQ(SchedulerConfig::from_json(bare, kDDIM).timestep_spacing, "leading");
  EXPECT_EQ(SchedulerConfig::from_json(bare, kEuler).timestep_spacing, "linspace");
  EXPECT_TRUE(SchedulerConfig::from_json(bare, kDDIM).set_alpha_to_one);
  EXPECT_TRUE(SchedulerConfig::from_json(bare, kDDPM).clip_sample);
  EXPECT_FALSE(SchedulerConfig::from_json(bare, kDPMSolverMultistep).variance_type.has_value());
}

TEST(SchedulerConfig, KeysListedAsPythonDefaultsFallBackToTheTargetDefaults) {
  // An Euler config saved with its default spacing, loaded as DDIM, gets DDIM's default (diffusers'
  // `_use_default_values`).
  io::Json j = {{"_class_name", "EulerDiscreteScheduler"},
                {"timestep_spacing", "linspace"},
                {"_use_default_values", {"timestep_spacing"}}};
  EXPECT_EQ(SchedulerConfig::from_json(j, kDDIM).timestep_spacing, "leading");
}

TEST(SchedulerConfig, UnsupportedValuesNameTheKey) {
  auto expect_error_naming = [](const io::Json& j, const char* cls, const std::string& key) {
    try {
      SchedulerConfig::from_json(j, cls, "x/scheduler_config.json");
      FAIL() << "expected an error for " << j.dump();
    } catch (const dreamlora::Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("x/scheduler_config.json"), std::string::npos) << e.what();
    }
  };
  expect_error_naming({{"beta_schedule", "quadratic"}}, kDDIM, "beta_schedule");
  expect_error_naming({{"timestep_spacing", "karras"}}, kEuler, "timestep_spacing");
  expect_error_naming({{"thresholding", true}}, kDDIM, "thresholding");
  expect_error_naming({{"algorithm_type", "sde-dpmsolver++"}}, kDPMSolverMultistep, "algorithm_type");
  expect_error_naming({{"prediction_type", "flow"}}, kDDPM, "prediction_type");
  // Keys the target class does not take are ignored, as diffusers does.
  EXPECT_NO_THROW(SchedulerConfig::from_json({{"algorithm_type", "sde-dpmsolver++"}}, kEuler));
}

TEST(SchedulerConfig, ToJsonRoundTrips) {
  auto c = SchedulerConfig::from_json(sd_config({{"use_karras_sigmas", true}}), kDPMSolverMultistep);
  auto j = c.to_json();
  EXPECT_EQ(j["_class_name"], "DPMSolverMultistepScheduler");
  EXPECT_EQ(j["timestep_spacing"], "leading");
  EXPECT_FALSE(j.contains("set_alpha_to_one"));  // not a DPM-Solver key
  auto back = SchedulerConfig::from_json(j, kDPMSolverMultistep);
  EXPECT_TRUE(back.use_karras_sigmas);
  EXPECT_EQ(back.beta_schedule, "scaled_linear");
  EXPECT_EQ(back.steps_offset, 1);
}

}  // namespace
