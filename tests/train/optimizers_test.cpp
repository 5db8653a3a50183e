// SGD and Prodigy against their references (torch.optim.SGD's formula; the prodigyopt package's
// numbers from prodigy_reference.py), and their state round-tripping bit for bit through the
// checkpoint's tensors and metadata.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

#include "dreamlora/common/error.h"
#include "dreamlora/train/optimizer.h"
#include "dreamlora/train/prodigy.h"
#include "dreamlora/train/sgd.h"
#include "dreamlora/train/train_config.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

namespace {

struct QuadraticProblem {
  torch::Tensor p1 = torch::tensor({0.5f, -0.3f, 0.2f, 0.1f, 0.7f, -0.4f}).view({2, 3}).requires_grad_(true);
  torch::Tensor p2 = torch::zeros({3, 2}).requires_grad_(true);
  torch::Tensor t1 = torch::tensor({1.0f, 0.5f, -0.5f, 0.3f, -0.2f, 0.1f}).view({2, 3});
  torch::Tensor t2 = torch::tensor({0.2f, -0.1f, 0.4f, 0.3f, -0.6f, 0.05f}).view({3, 2});
  std::vector<ParamGroup> groups() const { return {ParamGroup{{{"p1", p1}, {"p2", p2}}, 1.0}}; }
  void set_gradients() {
    p1.mutable_grad() = 2 * (p1.detach() - t1);
    p2.mutable_grad() = 2 * (p2.detach() - t2);
  }
};

void expect_relative(const torch::Tensor& actual, const std::vector<double>& expected, double rel) {
  auto a = actual.detach().flatten();
  ASSERT_EQ(a.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(a[static_cast<int64_t>(i)].item<double>(), expected[i], std::abs(expected[i]) * rel)
        << "element " << i;
}

std::map<std::string, torch::Tensor> cloned_state(const Optimizer& opt) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : opt.state_tensors()) out[name] = t.clone();
  return out;
}

}  // namespace

TEST(Prodigy, MatchesThePackageWithDiffusersSettingsAndAZeroLrWarmupStep) {
  QuadraticProblem q;
  ProdigyOptions o;
  o.weight_decay = 1e-2;
  o.use_bias_correction = o.safeguard_warmup = true;
  Prodigy opt(q.groups(), o);
  for (double mult : {0.0, 0.5, 1.0, 1.0, 1.0}) {
    q.set_gradients();
    opt.step(mult);
  }
  EXPECT_EQ(opt.k(), 4);  // the LR-0 step is no step
  EXPECT_EQ(opt.step_count(), 5);
  EXPECT_NEAR(opt.d(), 1e-6, 1e-12);
  expect_relative(q.p1,
                  {0.5000035166740417, -0.2999964654445648, 0.19999650120735168, 0.10000349581241608,
                   0.6999964714050293, -0.39999645948410034},
                  1e-6);
  expect_relative(q.p2,
                  {3.4999966374016367e-06, -3.4999943636648823e-06, 3.4999984563910402e-06,
                   3.4999980016436893e-06, -3.499998911138391e-06, 3.4999889066966716e-06},
                  1e-5);
}

TEST(Prodigy, MatchesThePackageWithCoupledDecayBeta3D0AndDCoef) {
  QuadraticProblem q;
  ProdigyOptions o;
  o.weight_decay = 0.1;
  o.decouple = false;
  o.beta3 = 0.95;
  o.d0 = 1e-4;
  o.d_coef = 2.0;
  Prodigy opt(q.groups(), o);
  for (int i = 0; i < 5; ++i) {
    q.set_gradients();
    opt.step(1.0);
  }
  EXPECT_NEAR(opt.d(), 0.014064061709095224, 0.014064061709095224 * 1e-5);
  expect_relative(q.p1,
                  {0.5248265266418457, -0.27519235014915466, 0.17518843710422516, 0.12489345669746399,
                   0.6751957535743713, -0.3751773238182068},
                  1e-5);
  expect_relative(q.p2,
                  {0.024890579283237457, -0.025006575509905815, 0.02483520843088627, 0.024853479117155075,
                   -0.024817122146487236, 0.025261905044317245},
                  1e-4);
}

TEST(Prodigy, MatchesThePackageWithoutFirstMoment) {
  QuadraticProblem q;
  ProdigyOptions o;
  o.beta1 = 0.0;
  o.beta2 = 0.99;
  Prodigy opt(q.groups(), o);
  for (int i = 0; i < 5; ++i) {
    q.set_gradients();
    opt.step(1.0);
  }
  EXPECT_NEAR(opt.d(), 0.004880050037340384, 0.004880050037340384 * 1e-5);
  expect_relative(q.p1,
                  {0.5534986257553101, -0.24649980664253235, 0.14650020003318787, 0.15349234640598297,
                   0.646499514579773, -0.34650135040283203},
                  1e-5);
}

TEST(Prodigy, StateRestoredFromTensorsAndMetadataContinuesBitForBit) {
  ProdigyOptions o;
  o.beta3 = 0.95;
  o.d0 = 1e-4;
  QuadraticProblem a, b;
  Prodigy first(a.groups(), o);
  for (int i = 0; i < 3; ++i) {
    a.set_gradients();
    first.step(1.0);
  }
  // b: a fresh optimizer on copies of a's weights, given a's saved state.
  b.p1.detach().copy_(a.p1.detach());
  b.p2.detach().copy_(a.p2.detach());
  Prodigy second(b.groups(), o);
  second.load_state(cloned_state(first), first.state_metadata(), first.step_count(), "test");
  for (int i = 0; i < 3; ++i) {
    a.set_gradients();
    first.step(1.0);
    b.set_gradients();
    second.step(1.0);
  }
  EXPECT_TRUE(torch::equal(a.p1, b.p1));
  EXPECT_TRUE(torch::equal(a.p2, b.p2));
  EXPECT_EQ(first.d(), second.d());
  EXPECT_EQ(first.state_metadata(), second.state_metadata());
}

TEST(Prodigy, MissingMetadataIsAnErrorNamingTheFile) {
  QuadraticProblem q;
  Prodigy opt(q.groups(), {});
  try {
    opt.load_state(cloned_state(opt), {}, 3, "out/checkpoint-3/optimizer.safetensors");
    FAIL() << "loaded without prodigy.d";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out/checkpoint-3/optimizer.safetensors"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("prodigy.d"), std::string::npos) << e.what();
  }
}

// torch.optim.SGD: g += wd * p; buf = g (first step) else buf = m * buf + (1 - dampening) * g;
// nesterov: g += m * buf, else g = buf; p -= lr * g. Computed here in double.
TEST(SGD, MatchesTorchFormulaWithMomentumNesterovAndWeightDecay) {
  for (bool nesterov : {false, true}) {
    QuadraticProblem q;
    const double lr = 0.1, m = 0.9, wd = 0.05;
    SGD opt({ParamGroup{{{"p1", q.p1}}, lr}}, SGDOptions{m, 0.0, wd, nesterov});
    std::vector<double> p(6), buf(6), t(6);
    for (int i = 0; i < 6; ++i) {
      p[i] = q.p1.flatten()[i].item<double>();
      t[i] = q.t1.flatten()[i].item<double>();
    }
    for (int step = 0; step < 4; ++step) {
      q.set_gradients();
      opt.step(0.5 + 0.25 * step);  // a schedule multiplier
      for (int i = 0; i < 6; ++i) {
        double g = 2 * (p[i] - t[i]) + wd * p[i];
        buf[i] = step == 0 ? g : m * buf[i] + g;
        g = nesterov ? g + m * buf[i] : buf[i];
        p[i] -= lr * (0.5 + 0.25 * step) * g;
      }
    }
    expect_relative(q.p1, p, 1e-5);
  }
}

TEST(SGD, StateRestoredContinuesBitForBit) {
  QuadraticProblem a, b;
  SGDOptions o{0.9, 0.1, 0.01, false};
  SGD first(a.groups(), o);
  for (int i = 0; i < 2; ++i) {
    a.set_gradients();
    first.step(1.0);
  }
  b.p1.detach().copy_(a.p1.detach());
  b.p2.detach().copy_(a.p2.detach());
  SGD second(b.groups(), o);
  second.load_state(cloned_state(first), first.state_metadata(), first.step_count(), "test");
  for (int i = 0; i < 2; ++i) {
    a.set_gradients();
    first.step(1.0);
    b.set_gradients();
    second.step(1.0);
  }
  EXPECT_TRUE(torch::equal(a.p1, b.p1));
  EXPECT_TRUE(torch::equal(a.p2, b.p2));
}

TEST(MakeOptimizer, OptimizerFlagPicksTheAlgorithmAndProdigyGivesEveryGroupTheLr) {
  TrainConfig c;
  QuadraticProblem q;
  c.optimizer = "sgd";
  EXPECT_NE(dynamic_cast<SGD*>(make_optimizer(c, q.groups()).get()), nullptr);
  c.optimizer = "prodigy";
  std::vector<ParamGroup> groups{ParamGroup{{{"p1", q.p1}}, 1.0}, ParamGroup{{{"p2", q.p2}}, 5e-6}};
  auto prodigy = make_optimizer(c, groups);
  EXPECT_EQ(prodigy->groups()[1].lr, 1.0);
  c.optimizer = "adam8bit";
  EXPECT_THROW(c.validate_late_settings(), Error);
  ASSERT_NE(find_train_option("optimizer_type"), nullptr);
  EXPECT_EQ(find_train_option("prodigy_safeguard_warmup")->is_switch, false);
}
