// Tests for nn::fused_attention: output and q/k/v gradients against bmm -> softmax -> bmm in float64.
#include "dreamlora/nn/fused_attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/attention_kernels.h"

namespace {

using torch::Tensor;

struct Case {
  int64_t batch, heads, lq, lk, d;
  bool causal;
};

struct Result {
  Tensor out, dq, dk, dv;
};

// softmax(q k^T / sqrt(D)) v with autograd, the definition the kernel must reproduce.
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  auto scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (causal) {
    auto mask = torch::ones({q.size(2), k.size(2)}, q.options().dtype(torch::kBool)).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  }
  return torch::matmul(torch::softmax(scores, -1), v);
}

template <typename Fn>
Result run(Fn attend, const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& grad) {
  auto q = q0.clone().requires_grad_(true), k = k0.clone().requires_grad_(true),
       v = v0.clone().requires_grad_(true);
  auto out = attend(q, k, v);
  (out * grad.to(out.scalar_type())).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

// max |a - e| / max |e|
double relative_error(const Tensor& actual, const Tensor& expected) {
  auto e = expected.to(torch::kFloat64);
  return (actual.to(torch::kFloat64) - e).abs().max().item<double>() / e.abs().max().item<double>();
}

void expect_matches_reference(const Case& c, double tol = 1e-5) {
  torch::manual_seed(1234 + c.lq * 7 + c.lk + c.d);
  auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  // Scaled up so the softmax is peaked, not near-uniform, and the test exercises the max subtraction.
  auto q = torch::randn({c.batch, c.heads, c.lq, c.d}, opts) * 2;
  auto k = torch::randn({c.batch, c.heads, c.lk, c.d}, opts) * 2;
  auto v = torch::randn({c.batch, c.heads, c.lk, c.d}, opts);
  auto grad = torch::randn({c.batch, c.heads, c.lq, c.d}, opts);
  auto fused =
      run([&](auto& a, auto& b, auto& w) { return dreamlora::nn::fused_attention(a, b, w, c.causal); }, q, k,
          v, grad);
  auto ref = run([&](auto& a, auto& b, auto& w) { return reference_attention(a, b, w, c.causal); },
                 q.to(torch::kFloat64), k.to(torch::kFloat64), v.to(torch::kFloat64), grad);
  const double errs[4] = {relative_error(fused.out, ref.out), relative_error(fused.dq, ref.dq),
                          relative_error(fused.dk, ref.dk), relative_error(fused.dv, ref.dv)};
  const char* names[4] = {"out", "dq", "dk", "dv"};
  for (int i = 0; i < 4; ++i) {
    std::cout << "[ parity ] B" << c.batch << " h" << c.heads << " Lq" << c.lq << " Lk" << c.lk << " D" << c.d
              << (c.causal ? " causal " : " ") << names[i] << " relative error " << errs[i] << std::endl;
    EXPECT_LE(errs[i], tol) << names[i];
  }
}

TEST(FusedAttention, SelfAttentionMatchesReferenceForTinyHeads) {
  expect_matches_reference({1, 8, 1000, 1000, 4, false});
}

TEST(FusedAttention, SelfAttentionMatchesReferenceForHeadDim8) {
  expect_matches_reference({2, 3, 130, 130, 8, false});
}

TEST(FusedAttention, CausalSelfAttentionMatchesReferenceAtClipLength) {
  expect_matches_reference({2, 4, 77, 77, 64, true});
}

TEST(FusedAttention, CrossAttentionMatchesReferenceWithFewerKeys) {
  expect_matches_reference({1, 2, 300, 77, 80, false});
}

TEST(FusedAttention, CausalMatchesReferenceWhenQueriesAndKeysDiffer) {
  expect_matches_reference({1, 2, 50, 77, 8, true});
  expect_matches_reference({1, 2, 90, 33, 4, true});
}

TEST(FusedAttention, HandlesNonContiguousInputsFromSplitHeads) {
  // [B, L, h*D] viewed as [B, h, L, D] via transpose, as nn::split_heads produces.
  torch::manual_seed(7);
  auto x = torch::randn({2, 40, 3 * 16});
  auto q = x.view({2, 40, 3, 16}).transpose(1, 2);
  ASSERT_FALSE(q.is_contiguous());
  auto out = dreamlora::nn::fused_attention(q, q, q, false);
  auto ref = reference_attention(q.to(torch::kFloat64), q.to(torch::kFloat64), q.to(torch::kFloat64), false);
  EXPECT_LE(relative_error(out, ref), 1e-5);
}

TEST(FusedAttention, WorksWithoutGradients) {
  torch::NoGradGuard no_grad;
  auto q = torch::randn({1, 2, 33, 8});
  auto out = dreamlora::nn::fused_attention(q, q, q, true);
  EXPECT_FALSE(out.requires_grad());
  auto d = q.to(torch::kFloat64);
  EXPECT_LE(relative_error(out, reference_attention(d, d, d, true)), 1e-5);
}

TEST(FusedAttention, RejectsNonFloat32Inputs) {
  auto q = torch::randn({1, 2, 8, 4}).to(torch::kFloat64);
  EXPECT_FALSE(dreamlora::nn::fused_attention_supports(q, q, q));
  EXPECT_THROW(dreamlora::nn::fused_attention(q, q, q), dreamlora::Error);
}

// The baseline (SSE2) and AVX2 builds of the row kernels give the same attention to float precision,
// including rows whose key count is not a multiple of the vector width (the scalar tails).
TEST(AttentionKernels, BaselineAndAvx2BuildsAgree) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    GTEST_SKIP() << "CPU without AVX2+FMA";
  namespace k = dreamlora::nn::kernels;
  const int64_t lq = 37, lk = 45, d = 6, ld = k::padded_stride(lk);
  torch::manual_seed(3);
  auto q = torch::randn({lq, d}) * 0.5, kT = torch::randn({d, ld}), vT = torch::randn({d, ld}),
       dout = torch::randn({lq, d});
  for (bool causal : {false, true}) {
    const k::AttentionHead h{
        q.data_ptr<float>(), kT.data_ptr<float>(), vT.data_ptr<float>(), lq, lk, d, d, ld, causal};
    std::vector<Tensor> results;
    for (const k::RowKernels* impl : {&k::generic::kKernels, &k::avx2::kKernels}) {
      auto out = torch::zeros({lq, d}), lse = torch::zeros({lq}), dq = torch::zeros({lq, d});
      auto dkT = torch::zeros({d, ld}), dvT = torch::zeros({d, ld}), scratch = torch::zeros({2 * lk});
      impl->forward_rows(h, 0, lq, out.data_ptr<float>(), lse.data_ptr<float>(), scratch.data_ptr<float>());
      impl->backward_head(h, out.data_ptr<float>(), lse.data_ptr<float>(), dout.data_ptr<float>(),
                          dq.data_ptr<float>(), dkT.data_ptr<float>(), dvT.data_ptr<float>(),
                          scratch.data_ptr<float>());
      results.insert(results.end(), {out, lse, dq, dkT, dvT});
    }
    for (size_t i = 0; i < 5; ++i)
      EXPECT_LE(relative_error(results[i], results[i + 5]), 1e-6)
          << "output " << i << (causal ? " causal" : "");
  }
#else
  GTEST_SKIP() << "not x86-64";
#endif
}

}  // namespace
