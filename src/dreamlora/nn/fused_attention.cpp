// Memory-efficient CPU attention: a torch::autograd::Function that computes softmax(q k^T * scale) v in
// blocks of query rows (each block sees all keys, so its softmax is exact) and recomputes them in backward.
#include "dreamlora/nn/fused_attention.h"

#include "dreamlora/common/error.h"

#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace dreamlora::nn {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Bytes of one [rows, Lk] fp32 score block: a few of these per thread should stay in L2 (512 KiB/core).
constexpr int64_t kBlockBytes = 128 << 10;

int64_t block_rows(int64_t lk) {
  // $DREAMLORA_ATTN_BLOCK_ROWS overrides, for tuning with bench_attention.
  static const int64_t forced = [] {
    const char* env = std::getenv("DREAMLORA_ATTN_BLOCK_ROWS");
    return env ? std::atoll(env) : 0;
  }();
  if (forced > 0) return forced;
  return std::clamp<int64_t>(kBlockBytes / (lk * static_cast<int64_t>(sizeof(float))), 16, 512);
}

// Keys a block of query rows [r0, r0+rows) can see: with causal, key j > query i is masked.
int64_t visible_keys(int64_t lk, int64_t r0, int64_t rows, bool causal) {
  return causal ? std::min(lk, r0 + rows) : lk;
}

// s: [rows, kc] scores of query rows starting at r0; sets key j > query i to -inf.
void mask_causal(Tensor& s, int64_t r0) {
  const int64_t rows = s.size(0), kc = s.size(1);
  float* data = s.data_ptr<float>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = r0 + i + 1; j < kc; ++j) data[i * kc + j] = neg_inf;
}

// p: [rows, kc] <- softmax(qs_blk k^T) for query rows [r0, r0+rows) of one head; s is scratch.
void block_probs(const Tensor& qs_blk, const Tensor& k_vis, int64_t r0, bool causal, Tensor& s, Tensor& p) {
  at::mm_out(s, qs_blk, k_vis.t());
  if (causal) mask_causal(s, r0);
  at::_softmax_out(p, s, 1, /*half_to_float=*/false);
}

// A [rows, cols] view at the front of a flat scratch buffer.
Tensor scratch(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// qs: [N, Lq, D] (pre-scaled), k: [N, Lk, D], v: [N, Lk, Dv] -> out [N, Lq, Dv]. Parallel over (head, block).
void forward_blocks(const Tensor& qs, const Tensor& k, const Tensor& v, bool causal, Tensor& out) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), lk = k.size(1);
  const int64_t bq = block_rows(lk);
  const int64_t n_blocks = (lq + bq - 1) / bq;
  at::parallel_for(0, n_heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
    auto s_buf = at::empty({bq * lk}, qs.options());
    auto p_buf = at::empty({bq * lk}, qs.options());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / n_blocks, r0 = (t % n_blocks) * bq, rows = std::min(bq, lq - r0);
      const int64_t kc = visible_keys(lk, r0, rows, causal);
      auto s = scratch(s_buf, rows, kc), p = scratch(p_buf, rows, kc);
      block_probs(qs[n].narrow(0, r0, rows), k[n].narrow(0, 0, kc), r0, causal, s, p);
      auto o = out[n].narrow(0, r0, rows);  // [rows, Dv]
      at::mm_out(o, p, v[n].narrow(0, 0, kc));
    }
  });
}

struct Grads {
  Tensor dq, dk, dv;
};

// Gradients of out = softmax(qs k^T) v given dout [N, Lq, Dv]. Parallel over heads: each head's dk/dv
// accumulate over its query blocks. dq is returned w.r.t. qs (the caller applies the scale).
Grads backward_blocks(const Tensor& qs, const Tensor& k, const Tensor& v, const Tensor& dout, bool causal) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), lk = k.size(1);
  const int64_t bq = block_rows(lk);
  Grads g{at::empty_like(qs), at::zeros_like(k), at::zeros_like(v)};
  at::parallel_for(0, n_heads, 1, [&](int64_t begin, int64_t end) {
    auto s_buf = at::empty({bq * lk}, qs.options());
    auto p_buf = at::empty({bq * lk}, qs.options());
    auto dp_buf = at::empty({bq * lk}, qs.options());
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t r0 = 0; r0 < lq; r0 += bq) {
        const int64_t rows = std::min(bq, lq - r0), kc = visible_keys(lk, r0, rows, causal);
        auto s = scratch(s_buf, rows, kc), p = scratch(p_buf, rows, kc), dp = scratch(dp_buf, rows, kc);
        auto q_blk = qs[n].narrow(0, r0, rows), do_blk = dout[n].narrow(0, r0, rows);
        auto k_vis = k[n].narrow(0, 0, kc), v_vis = v[n].narrow(0, 0, kc);
        block_probs(q_blk, k_vis, r0, causal, s, p);
        g.dv[n].narrow(0, 0, kc).addmm_(p.t(), do_blk);  // dV += P^T dO
        at::mm_out(dp, do_blk, v_vis.t());                // dP = dO V^T
        // dS = P * (dP - rowsum(dP * P)); rowsum(dP * P) == rowsum(dO * O). Written over s.
        at::_softmax_backward_data_out(s, dp, p, 1, at::kFloat);
        auto dq_blk = g.dq[n].narrow(0, r0, rows);
        at::mm_out(dq_blk, s, k_vis);                     // dQs = dS K
        g.dk[n].narrow(0, 0, kc).addmm_(s.t(), q_blk);    // dK = dS^T Qs
      }
    }
  });
  return g;
}

struct FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
  // q: [B, h, Lq, D], k: [B, h, Lk, D], v: [B, h, Lk, Dv] -> [B, h, Lq, Dv]
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
    const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2), dv = v.size(3);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    // Detached so ops on worker threads never record autograd history whatever their grad mode.
    auto qs = (q.detach() * scale).reshape({b * h, lq, d}).contiguous();  // [N, Lq, D]
    auto k3 = k.detach().reshape({b * h, lk, d}).contiguous();            // [N, Lk, D]
    auto v3 = v.detach().reshape({b * h, lk, dv}).contiguous();           // [N, Lk, Dv]
    auto out = at::empty({b * h, lq, dv}, qs.options());
    forward_blocks(qs, k3, v3, causal, out);
    ctx->save_for_backward({qs, k3, v3});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    return out.view({b, h, lq, dv});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& qs = saved[0];
    const auto& k3 = saved[1];
    const auto& v3 = saved[2];
    const bool causal = ctx->saved_data["causal"].toBool();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t n = qs.size(0), lq = qs.size(1), lk = k3.size(1), dv = v3.size(2);
    auto dout = grads[0].detach().reshape({n, lq, dv}).contiguous();  // [N, Lq, Dv]
    auto g = backward_blocks(qs, k3, v3, dout, causal);
    g.dq.mul_(scale);
    const auto& go = grads[0];
    const int64_t b = go.size(0), h = go.size(1);
    return {g.dq.view({b, h, lq, qs.size(2)}), g.dk.view({b, h, lk, k3.size(2)}), g.dv.view({b, h, lk, dv}),
            Tensor()};
  }
};

}  // namespace

bool fused_attention_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  for (const auto* t : {&q, &k, &v})
    if (t->scalar_type() != torch::kFloat32 || !t->device().is_cpu() || t->layout() != torch::kStrided) return false;
  return q.size(0) == k.size(0) && q.size(0) == v.size(0) && q.size(1) == k.size(1) && q.size(1) == v.size(1) &&
         q.size(3) == k.size(3) && k.size(2) == v.size(2) && q.size(2) > 0 && k.size(2) > 0 && q.size(3) > 0;
}

torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal) {
  DL_CHECK(fused_attention_supports(q, k, v), "fused_attention: expected CPU fp32 q [B,h,Lq,D], k [B,h,Lk,D], ",
              "v [B,h,Lk,Dv]; got q ", q.sizes(), " ", q.scalar_type(), ", k ", k.sizes(), ", v ", v.sizes());
  return FusedAttentionFunction::apply(q, k, v, causal);
}

}  // namespace dreamlora::nn
