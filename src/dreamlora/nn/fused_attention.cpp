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

// Hand-written products: OpenBLAS sgemm is ~80x slower on these thin blocks when called from
// at::parallel_for workers with openblas_set_num_threads(1) (what dreamlora::configure_threads sets).

// s[rows, kc] = a[rows, d] bT[d, ldb][:, :kc] (rows of a contiguous); vectorises over keys.
void mm_rows_by_transposed(const float* a, int64_t rows, int64_t d, const float* bT, int64_t ldb, int64_t kc, float* s) {
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * kc;
    std::fill(si, si + kc, 0.0f);
    for (int64_t c = 0; c < d; ++c) {
      const float x = a[i * d + c];
      const float* br = bT + c * ldb;
      for (int64_t j = 0; j < kc; ++j) si[j] += x * br[j];
    }
  }
}

float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u] * b[j + u];
  float r = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; ++j) r += a[j] * b[j];
  return r;
}

// out[rows, d] = p[rows, kc] bT[d, ldb][:, :kc]^T
void mm_rows_dot_transposed(const float* p, int64_t rows, int64_t kc, const float* bT, int64_t ldb, int64_t d, float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) out[i * d + c] = dot(p + i * kc, bT + c * ldb, kc);
}

// accT[d, lda][:, :kc] += (p[rows, kc]^T x[rows, d])^T
void accumulate_transposed(const float* p, int64_t rows, int64_t kc, const float* x, int64_t d, float* accT, int64_t lda) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) {
      const float w = x[i * d + c];
      float* dst = accT + c * lda;
      const float* pi = p + i * kc;
      for (int64_t j = 0; j < kc; ++j) dst[j] += pi[j] * w;
    }
}

// p: [rows, kc] <- softmax(qs_blk k^T) for query rows [r0, r0+rows) of one head; s is scratch.
void block_probs(const float* q_blk, int64_t d, const float* kT, int64_t lk, int64_t r0, bool causal, Tensor& s,
                 Tensor& p) {
  mm_rows_by_transposed(q_blk, s.size(0), d, kT, lk, s.size(1), s.data_ptr<float>());
  if (causal) mask_causal(s, r0);
  at::_softmax_out(p, s, 1, /*half_to_float=*/false);
}

// A [rows, cols] view at the front of a flat scratch buffer.
Tensor scratch(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// qs: [N, Lq, D] (pre-scaled), kT: [N, D, Lk], vT: [N, Dv, Lk] -> out [N, Lq, Dv]. Parallel over (head, block).
void forward_blocks(const Tensor& qs, const Tensor& kT, const Tensor& vT, bool causal, Tensor& out) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), d = qs.size(2), lk = kT.size(2), dv = vT.size(1);
  const int64_t bq = block_rows(lk);
  const int64_t n_blocks = (lq + bq - 1) / bq;
  const float *q_ptr = qs.data_ptr<float>(), *k_ptr = kT.data_ptr<float>(), *v_ptr = vT.data_ptr<float>();
  float* o_ptr = out.data_ptr<float>();
  at::parallel_for(0, n_heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
    auto s_buf = at::empty({bq * lk}, qs.options());
    auto p_buf = at::empty({bq * lk}, qs.options());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / n_blocks, r0 = (t % n_blocks) * bq, rows = std::min(bq, lq - r0);
      const int64_t kc = visible_keys(lk, r0, rows, causal);
      auto s = scratch(s_buf, rows, kc), p = scratch(p_buf, rows, kc);
      block_probs(q_ptr + (n * lq + r0) * d, d, k_ptr + n * d * lk, lk, r0, causal, s, p);
      mm_rows_dot_transposed(p.data_ptr<float>(), rows, kc, v_ptr + n * dv * lk, lk, dv, o_ptr + (n * lq + r0) * dv);
    }
  });
}

struct Grads {
  Tensor dq, dk, dv;
};

// Gradients of out = softmax(qs k^T) v given dout [N, Lq, Dv]. Parallel over heads: each head's dk/dv
// accumulate over its query blocks. dq is returned w.r.t. qs (the caller applies the scale).
Grads backward_blocks(const Tensor& qs, const Tensor& kT, const Tensor& vT, const Tensor& dout, bool causal) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), d = qs.size(2), lk = kT.size(2), dv = vT.size(1);
  const int64_t bq = block_rows(lk);
  auto dq = at::empty_like(qs);
  auto dkT = at::zeros_like(kT), dvT = at::zeros_like(vT);  // [N, D, Lk], [N, Dv, Lk]
  const float *q_ptr = qs.data_ptr<float>(), *k_ptr = kT.data_ptr<float>(), *v_ptr = vT.data_ptr<float>();
  const float* do_ptr = dout.data_ptr<float>();
  float *dq_ptr = dq.data_ptr<float>(), *dk_ptr = dkT.data_ptr<float>(), *dv_ptr = dvT.data_ptr<float>();
  at::parallel_for(0, n_heads, 1, [&](int64_t begin, int64_t end) {
    auto s_buf = at::empty({bq * lk}, qs.options());
    auto p_buf = at::empty({bq * lk}, qs.options());
    auto dp_buf = at::empty({bq * lk}, qs.options());
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t r0 = 0; r0 < lq; r0 += bq) {
        const int64_t rows = std::min(bq, lq - r0), kc = visible_keys(lk, r0, rows, causal);
        auto s = scratch(s_buf, rows, kc), p = scratch(p_buf, rows, kc), dp = scratch(dp_buf, rows, kc);
        const float* q_blk = q_ptr + (n * lq + r0) * d;
        const float* do_blk = do_ptr + (n * lq + r0) * dv;
        block_probs(q_blk, d, k_ptr + n * d * lk, lk, r0, causal, s, p);
        accumulate_transposed(p.data_ptr<float>(), rows, kc, do_blk, dv, dv_ptr + n * dv * lk, lk);  // dV += P^T dO
        mm_rows_by_transposed(do_blk, rows, dv, v_ptr + n * dv * lk, lk, kc, dp.data_ptr<float>());   // dP = dO V^T
        // dS = P * (dP - rowsum(dP * P)); rowsum(dP * P) == rowsum(dO * O). Written over s.
        at::_softmax_backward_data_out(s, dp, p, 1, at::kFloat);
        const float* ds = s.data_ptr<float>();
        mm_rows_dot_transposed(ds, rows, kc, k_ptr + n * d * lk, lk, d, dq_ptr + (n * lq + r0) * d);  // dQs = dS K
        accumulate_transposed(ds, rows, kc, q_blk, d, dk_ptr + n * d * lk, lk);                         // dK += dS^T Qs
      }
    }
  });
  return {dq, dkT.transpose(1, 2).contiguous(), dvT.transpose(1, 2).contiguous()};
}

struct FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
  // q: [B, h, Lq, D], k: [B, h, Lk, D], v: [B, h, Lk, Dv] -> [B, h, Lq, Dv]
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
    const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2), dv = v.size(3);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    // Detached so ops on worker threads never record autograd history whatever their grad mode.
    auto qs = (q.detach() * scale).reshape({b * h, lq, d}).contiguous();  // [N, Lq, D]
    auto k3 = k.detach().reshape({b * h, lk, d}).transpose(1, 2).contiguous();   // [N, D, Lk]
    auto v3 = v.detach().reshape({b * h, lk, dv}).transpose(1, 2).contiguous();  // [N, Dv, Lk]
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
    const int64_t n = qs.size(0), lq = qs.size(1), lk = k3.size(2), dv = v3.size(1);
    auto dout = grads[0].detach().reshape({n, lq, dv}).contiguous();  // [N, Lq, Dv]
    auto g = backward_blocks(qs, k3, v3, dout, causal);
    g.dq.mul_(scale);
    const auto& go = grads[0];
    const int64_t b = go.size(0), h = go.size(1);
    return {g.dq.view({b, h, lq, qs.size(2)}), g.dk.view({b, h, lk, qs.size(2)}), g.dv.view({b, h, lk, dv}),
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
