// The training step on its own (train/training_step), on a generated tiny SD model: the micro-batch loss
// equals the DreamBooth loss computed by hand from its inputs, and a step whose gradients overflow leaves
// the LoRA weights and the LR schedule where they were.
#include "dreamlora/train/training_step.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "dreamlora/lora/inject.h"
#include "dreamlora/synth/tiny_model.h"
#include "dreamlora/train/training_setup.h"
#include "gtest/gtest.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::io;
using namespace dreamlora::nn;
using namespace dreamlora::pipeline;
using namespace dreamlora::train;
using namespace dreamlora::synth;

namespace {

struct TinyTraining {
  TrainConfig config;
  ModelBundle model;
  std::unique_ptr<schedulers::DDPMScheduler> ddpm;
  CaptionEmbedder embedder{true};
  std::unique_ptr<Optimizer> optimizer;
  LossScaler scaler{true};  // as fp16 training runs it
  Distributed dist{DistributedEnv{}, torch::kCPU, std::chrono::seconds(10)};

  std::filesystem::path dir = dreamlora::testing::make_temp_dir("training-step");

  explicit TinyTraining(const std::string& prediction_type = "") {
    write_tiny_model(dir, {});
    LoadOptions load;
    load.prediction_type = prediction_type;
    model = ModelBundle::load(dir, load);
    ddpm = std::make_unique<schedulers::DDPMScheduler>(training_noise_schedule(model));
    inject_training_lora(model, config, torch::kCPU);
    optimizer = make_training_optimizer(model, config);
  }
  ~TinyTraining() { std::filesystem::remove_all(dir); }
  StepParts parts() {
    return {model, *ddpm, embedder, *optimizer, scaler, dist, torch::kCPU, torch::kFloat32};
  }
};

// Two samples, each drawn from its own generator: [2, 4, 8, 8] latents and noise, timesteps 10 and 900.
MicroBatch two_samples() {
  auto gen = sample_generator(1, kInstanceStream, 0);
  MicroBatch b;
  b.latent_mean = torch::randn({2, 4, 8, 8}, gen);
  b.latent_std = torch::rand({2, 4, 8, 8}, gen);
  b.eps = torch::randn({2, 4, 8, 8}, gen);
  b.noise = torch::randn({2, 4, 8, 8}, gen);
  b.timesteps = torch::tensor({int64_t{10}, int64_t{900}});
  b.captions = {"a photo of sks toy", "a photo of a toy"};
  return b;
}

// MSE to epsilon (or v = sqrt(ab) * noise - sqrt(1 - ab) * x0) of the UNet's prediction at the noisy
// latents, per sample, written out by hand.
std::vector<double> hand_losses(TinyTraining& t, const MicroBatch& b, bool v_target = false) {
  torch::NoGradGuard no_grad;
  const auto& vae = t.model.vae->config();
  auto latents = (b.latent_mean + b.latent_std * b.eps - vae.shift_factor.value_or(0.0)) * vae.scaling_factor;
  auto ab = t.ddpm->alphas_cumprod().index_select(0, b.timesteps).view({2, 1, 1, 1});
  auto noisy = ab.sqrt() * latents + (1 - ab).sqrt() * b.noise;
  auto emb = t.embedder.embed(t.model, b.captions);
  auto pred = t.model.unet->forward(noisy, b.timesteps, emb.prompt_embeds);
  auto target = v_target ? ab.sqrt() * b.noise - (1 - ab).sqrt() * latents : b.noise;
  auto per_sample = (pred - target).pow(2).mean({1, 2, 3});
  return {per_sample[0].item<double>(), per_sample[1].item<double>()};
}

}  // namespace

TEST(TrainingStep, MicroBatchLossIsTheMseToTheNoiseOfTheNoisyLatents) {
  TinyTraining t;
  const auto batch = two_samples();
  StepOptions o;
  o.instance_count = 2;
  const auto loss = micro_batch_loss(t.parts(), batch, o);
  const auto hand = hand_losses(t, batch);
  EXPECT_NEAR(loss.total.item<double>(), (hand[0] + hand[1]) / 2, 1e-6 * (hand[0] + hand[1]));
  EXPECT_TRUE(loss.total.requires_grad());
}

TEST(TrainingStep, PredictionTypeVTrainsTowardsTheVelocityOfTheNoisyLatents) {
  TinyTraining eps, v("v_prediction");  // the tiny model's scheduler config says epsilon
  EXPECT_EQ(eps.ddpm->prediction_type(), "epsilon");
  EXPECT_EQ(v.ddpm->prediction_type(), "v_prediction");
  EXPECT_EQ(v.model.scheduler_config["prediction_type"], "v_prediction");
  const auto batch = two_samples();
  StepOptions o;
  o.instance_count = 2;
  const auto loss = micro_batch_loss(v.parts(), batch, o);
  const auto hand = hand_losses(v, batch, true);
  EXPECT_NEAR(loss.total.item<double>(), (hand[0] + hand[1]) / 2, 1e-6 * (hand[0] + hand[1]));
  const auto eps_hand = hand_losses(v, batch, false);
  EXPECT_GT(std::abs(loss.total.item<double>() - (eps_hand[0] + eps_hand[1]) / 2), 1e-3);
}

TEST(TrainingStep, PriorPreservationAddsTheWeightedClassHalf) {
  TinyTraining t;
  const auto batch = two_samples();
  StepOptions o;
  o.instance_count = 1;
  o.prior_preservation = true;
  o.prior_loss_weight = 0.25;
  const auto loss = micro_batch_loss(t.parts(), batch, o);
  const auto hand = hand_losses(t, batch);
  EXPECT_NEAR(loss.total.item<double>(), hand[0] + 0.25 * hand[1], 1e-6 * (hand[0] + hand[1]));
  EXPECT_NEAR(loss.prior.item<double>(), hand[1], 1e-6 * hand[1]);
}

TEST(TrainingStep, OverflowingGradientsLeaveWeightsAndScheduleUnchanged) {
  TinyTraining t;
  StepOptions o;
  o.base_lr = 1e-3;
  o.poison_gradients = true;
  const auto before = trainable_parameters(*t.optimizer).front().clone();
  const float scale_before = t.scaler.scale_value();
  const auto step = training_step(t.parts(), o, [] { return two_samples(); });
  EXPECT_TRUE(step.skipped);
  EXPECT_EQ(t.optimizer->step_count(), 0);
  EXPECT_TRUE(torch::equal(trainable_parameters(*t.optimizer).front(), before));
  EXPECT_LT(t.scaler.scale_value(), scale_before);
  EXPECT_TRUE(std::isfinite(step.loss.item<double>()));
}

TEST(TrainingStep, AStepUpdatesTheLoRAWeightsOnce) {
  TinyTraining t;
  StepOptions o;
  o.base_lr = 1e-3;
  o.gradient_accumulation = 2;
  int drawn = 0;
  const auto before = trainable_parameters(*t.optimizer);
  std::vector<torch::Tensor> copies;
  for (const auto& p : before) copies.push_back(p.detach().clone());
  const auto step = training_step(t.parts(), o, [&] {
    ++drawn;
    return two_samples();
  });
  EXPECT_FALSE(step.skipped);
  EXPECT_EQ(drawn, 2);
  EXPECT_EQ(t.optimizer->step_count(), 1);
  bool changed = false;
  for (size_t i = 0; i < copies.size(); ++i) changed |= !torch::equal(before[i], copies[i]);
  EXPECT_TRUE(changed);
}
