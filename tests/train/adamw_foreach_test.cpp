// The foreach AdamW (all tensors per op) gives the single-tensor update bit for bit on CPU, with weight
// decay, gradient clipping, two parameter groups and parameters that have no gradient at some steps.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "dreamlora/train/adamw.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::train;

namespace {

std::vector<ParamGroup> make_groups() {
  auto gen = at::detail::createCPUGenerator(7);
  std::vector<ParamGroup> groups(2);
  groups[0].lr = 1e-3;
  groups[1].lr = 5e-6;
  const std::vector<std::vector<int64_t>> shapes{{4, 32}, {64, 4}, {4, 17}, {3, 4}, {1}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto p = torch::randn(shapes[i], gen).requires_grad_(true);
    groups[i % 2].params.emplace_back("p" + std::to_string(i), p);
  }
  return groups;
}

std::vector<ParamGroup> clone_groups(const std::vector<ParamGroup>& groups) {
  auto out = groups;
  for (auto& g : out)
    for (auto& [name, p] : g.params) p = p.detach().clone().requires_grad_(true);
  return out;
}

// Gives every parameter of both optimizers the same gradient (none for p2 at odd steps), scaled so
// that clipping engages at some steps and not at others.
void set_gradients(AdamW& a, AdamW& b, int step) {
  auto gen = at::detail::createCPUGenerator(100 + step);
  for (size_t gi = 0; gi < a.groups().size(); ++gi)
    for (size_t pi = 0; pi < a.groups()[gi].params.size(); ++pi) {
      const auto& [name, pa] = a.groups()[gi].params[pi];
      const auto& pb = b.groups()[gi].params[pi].second;
      if (name == "p2" && step % 2 == 1) continue;
      auto g = torch::randn(pa.sizes(), gen) * (step % 3 == 0 ? 10.0 : 0.01);
      pa.mutable_grad() = g.clone();
      pb.mutable_grad() = g.clone();
    }
}

}  // namespace

TEST(AdamWForeach, EqualsTheSingleTensorUpdateBitForBit) {
  const auto groups = make_groups();
  AdamWOptions single_opts{0.9, 0.999, 1e-8, 1e-2, /*foreach=*/false};
  AdamWOptions foreach_opts = single_opts;
  foreach_opts.foreach = true;
  AdamW single(clone_groups(groups), single_opts), foreach (clone_groups(groups), foreach_opts);
  for (int step = 0; step < 12; ++step) {
    set_gradients(single, foreach, step);
    const auto norm_single = single.clip_grad_norm(1.0), norm_foreach = foreach.clip_grad_norm(1.0);
    EXPECT_TRUE(torch::equal(norm_single, norm_foreach)) << "step " << step;
    const double lr_mult = 1.0 - step / 20.0;
    single.step(lr_mult);
    foreach
      .step(lr_mult);
    single.zero_grad();
    foreach
      .zero_grad();
  }
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (size_t pi = 0; pi < groups[gi].params.size(); ++pi) {
      const auto& a = single.groups()[gi].params[pi].second;
      const auto& b = foreach.groups()[gi].params[pi].second;
      EXPECT_TRUE(torch::equal(a, b)) << single.groups()[gi].params[pi].first;
      EXPECT_FALSE(torch::equal(a, groups[gi].params[pi].second)) << "parameter did not move";
    }
  const auto sa = single.state_tensors(), sb = foreach.state_tensors();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
  EXPECT_EQ(single.step_count(), foreach.step_count());
}

TEST(AdamWForeach, ClipScalesAllGradientsToTheMaxNormWithoutReadingIt) {
  auto p = torch::zeros({3}).requires_grad_(true), q = torch::zeros({4}).requires_grad_(true);
  AdamW opt({ParamGroup{{{"p", p}, {"q", q}}, 1e-3}}, AdamWOptions{});
  p.mutable_grad() = torch::full({3}, 3.0);
  q.mutable_grad() = torch::full({4}, 4.0);  // global norm sqrt(27 + 64) = sqrt(91)
  const auto norm = opt.clip_grad_norm(1.0);
  EXPECT_NEAR(norm.item<double>(), std::sqrt(91.0), 1e-5);
  const double after =
      std::sqrt(p.grad().square().sum().item<double>() + q.grad().square().sum().item<double>());
  EXPECT_NEAR(after, 1.0, 1e-5);
}
