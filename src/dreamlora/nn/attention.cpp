#include "dreamlora/nn/attention.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#include "dreamlora/nn/fused_attention.h"

namespace dreamlora::nn {

torch::Tensor split_heads(const torch::Tensor& x, int64_t heads) {
  // [B, L, heads*D] -> [B, heads, L, D]
  auto b = x.size(0), l = x.size(1);
  return x.view({b, l, heads, x.size(2) / heads}).transpose(1, 2);
}

torch::Tensor merge_heads(const torch::Tensor& x) {
  // [B, heads, L, D] -> [B, L, heads*D]
  auto b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3);
  return x.transpose(1, 2).reshape({b, l, h * d});
}

#if TORCH_VERSION_MAJOR < 2
namespace {

// Largest score block materialised at once by the fallback path (bytes).
constexpr int64_t kScoreBudgetBytes = 256ll << 20;

torch::Tensor attention_sliced(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               bool causal, bool upcast) {
  const auto b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2), d = q.size(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto q3 = q.reshape({b * h, lq, d});
  auto k3 = k.reshape({b * h, lk, d});
  auto v3 = v.reshape({b * h, lk, v.size(3)});
  auto compute_type = upcast ? torch::kFloat32 : q.scalar_type();
  torch::Tensor mask;
  if (causal) mask = torch::ones({lq, lk}, q.options().dtype(torch::kBool)).triu(1);

  const int64_t per_slice = lq * lk * static_cast<int64_t>(torch::elementSize(compute_type));
  const int64_t slice =
      std::max<int64_t>(1, std::min<int64_t>(b * h, kScoreBudgetBytes / std::max<int64_t>(per_slice, 1)));
  std::vector<torch::Tensor> outs;
  for (int64_t start = 0; start < b * h; start += slice) {
    auto end = std::min(start + slice, b * h);
    auto qs = q3.slice(0, start, end).to(compute_type);
    auto ks = k3.slice(0, start, end).to(compute_type);
    auto scores = torch::bmm(qs * scale, ks.transpose(1, 2));  // [n, Lq, Lk]
    if (causal) scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    // softmax in fp32 for fp16/bf16 scores, as torch.autocast runs it (exp of half scores loses the tail).
    auto probs = torch::softmax(scores, -1, torch::kFloat32).to(v.scalar_type());
    outs.push_back(torch::bmm(probs, v3.slice(0, start, end)));  // [n, Lq, Dv]
  }
  auto out = outs.size() == 1 ? outs[0] : torch::cat(outs, 0);
  return out.view({b, h, lq, v.size(3)});
}

}  // namespace
#endif

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
                        bool upcast) {
#if TORCH_VERSION_MAJOR >= 2
  // SDPA (flash / memory-efficient kernels on CUDA, which accumulate in fp32, so `upcast` needs no copy:
  // diffusers' AttnProcessor2_0 ignores it too). On the CPU the fused row kernel still wins for tiny
  // heads (bench_attention, docs/PERFORMANCE.md: head_dim 4 and 8 faster, 16 and up slower).
  constexpr int64_t kFusedBeatsSdpaUpToHeadDim = 8;
  if (q.size(-1) <= kFusedBeatsSdpaUpToHeadDim && fused_attention_supports(q, k, v))
    return fused_attention(q, k, v, causal);
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/causal);
#else
  // fp32 on CPU: blockwise kernel that keeps no [L, L] probabilities for backward (upcast is a no-op).
  if (fused_attention_supports(q, k, v)) return fused_attention(q, k, v, causal);
  return attention_sliced(q, k, v, causal, upcast);
#endif
}

}  // namespace dreamlora::nn
