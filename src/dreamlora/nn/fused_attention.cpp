// Memory-efficient CPU attention: a torch::autograd::Function that computes softmax(q k^T * scale) v one
// query row at a time (each row sees all its keys, so its softmax is exact), keeps the output and each
// row's logsumexp, and recomputes the probabilities in backward. The row kernels are attention_kernels.*.
#include "dreamlora/nn/fused_attention.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/attention_kernels.h"

namespace dreamlora::nn {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kRowsPerTask = 64;

// Keys and values transposed to [N, D, ld] with padded rows (see kernels::padded_stride).
Tensor transposed_padded(const Tensor& x, int64_t n, int64_t l, int64_t d) {
  auto out = at::empty({n, d, kernels::padded_stride(l)}, x.options());
  out.narrow(2, 0, l).copy_(x.detach().reshape({n, l, d}).transpose(1, 2));
  return out;
}

kernels::AttentionHead head_view(const Tensor& qs, const Tensor& kT, const Tensor& vT, int64_t lk, int64_t n,
                                 bool causal) {
  const int64_t lq = qs.size(1), d = qs.size(2), dv = vT.size(1), ld = kT.size(2);
  return {qs.data_ptr<float>() + n * lq * d,
          kT.data_ptr<float>() + n * d * ld,
          vT.data_ptr<float>() + n * dv * ld,
          lq,
          lk,
          d,
          dv,
          ld,
          causal};
}

// qs: [N, Lq, D] (pre-scaled), kT: [N, D, ld], vT: [N, Dv, ld] -> out [N, Lq, Dv], lse [N, Lq].
// Parallel over (head, block of query rows).
void forward_heads(const Tensor& qs, const Tensor& kT, const Tensor& vT, int64_t lk, bool causal, Tensor& out,
                   Tensor& lse) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), dv = vT.size(1);
  const int64_t blocks = (lq + kRowsPerTask - 1) / kRowsPerTask;
  const auto& k = kernels::row_kernels();
  float *o_ptr = out.data_ptr<float>(), *lse_ptr = lse.data_ptr<float>();
  at::parallel_for(0, n_heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(lk));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, r0 = (t % blocks) * kRowsPerTask;
      k.forward_rows(head_view(qs, kT, vT, lk, n, causal), r0, std::min(lq, r0 + kRowsPerTask),
                     o_ptr + n * lq * dv, lse_ptr + n * lq, scratch.data());
    }
  });
}

struct Grads {
  Tensor dq, dkT, dvT;
};

// Gradients w.r.t. qs, kT and vT (padded like them) given dout [N, Lq, Dv]. Parallel over heads (each
// head's dK and dV sum over all its query rows).
Grads backward_heads(const Tensor& qs, const Tensor& kT, const Tensor& vT, int64_t lk, const Tensor& out,
                     const Tensor& lse, const Tensor& dout, bool causal) {
  const int64_t n_heads = qs.size(0), lq = qs.size(1), d = qs.size(2), dv = vT.size(1), ld = kT.size(2);
  Grads g{at::empty_like(qs), at::zeros_like(kT), at::zeros_like(vT)};
  const auto& k = kernels::row_kernels();
  at::parallel_for(0, n_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(2 * lk));
    for (int64_t n = begin; n < end; ++n)
      k.backward_head(head_view(qs, kT, vT, lk, n, causal), out.data_ptr<float>() + n * lq * dv,
                      lse.data_ptr<float>() + n * lq, dout.data_ptr<float>() + n * lq * dv,
                      g.dq.data_ptr<float>() + n * lq * d, g.dkT.data_ptr<float>() + n * d * ld,
                      g.dvT.data_ptr<float>() + n * dv * ld, scratch.data());
  });
  return g;
}

struct FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
  // q: [B, h, Lq, D], k: [B, h, Lk, D], v: [B, h, Lk, Dv] -> [B, h, Lq, Dv]
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        bool causal) {
    const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2), dv = v.size(3);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    auto qs = (q.detach() * scale).reshape({b * h, lq, d}).contiguous();  // [N, Lq, D]
    auto kT = transposed_padded(k, b * h, lk, d);                         // [N, D, ld]
    auto vT = transposed_padded(v, b * h, lk, dv);                        // [N, Dv, ld]
    auto out = at::empty({b * h, lq, dv}, qs.options());
    auto lse = at::empty({b * h, lq}, qs.options());
    forward_heads(qs, kT, vT, lk, causal, out, lse);
    ctx->save_for_backward({qs, kT, vT, out, lse});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["lk"] = lk;
    ctx->saved_data["scale"] = scale;
    return out.view({b, h, lq, dv});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &qs = saved[0], &kT = saved[1], &vT = saved[2], &out = saved[3], &lse = saved[4];
    const bool causal = ctx->saved_data["causal"].toBool();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t n = qs.size(0), lq = qs.size(1), d = qs.size(2), lk = ctx->saved_data["lk"].toInt(),
                  dv = vT.size(1);
    auto dout = grads[0].detach().reshape({n, lq, dv}).contiguous();  // [N, Lq, Dv]
    auto g = backward_heads(qs, kT, vT, lk, out, lse, dout, causal);
    g.dq.mul_(scale);
    const int64_t b = grads[0].size(0), h = grads[0].size(1);
    return {g.dq.view({b, h, lq, d}), g.dkT.narrow(2, 0, lk).transpose(1, 2).reshape({b, h, lk, d}),
            g.dvT.narrow(2, 0, lk).transpose(1, 2).reshape({b, h, lk, dv}), Tensor()};
  }
};

}  // namespace

bool fused_attention_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  for (const auto* t : {&q, &k, &v})
    if (t->scalar_type() != torch::kFloat32 || !t->device().is_cpu() || t->layout() != torch::kStrided)
      return false;
  return q.size(0) == k.size(0) && q.size(0) == v.size(0) && q.size(1) == k.size(1) &&
         q.size(1) == v.size(1) && q.size(3) == k.size(3) && k.size(2) == v.size(2) && q.size(2) > 0 &&
         k.size(2) > 0 && q.size(3) > 0;
}

torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              bool causal) {
  DL_CHECK(fused_attention_supports(q, k, v),
           "fused_attention: expected CPU fp32 q [B,h,Lq,D], k [B,h,Lk,D], ", "v [B,h,Lk,Dv]; got q ",
           q.sizes(), " ", q.scalar_type(), ", k ", k.sizes(), ", v ", v.sizes());
  return FusedAttentionFunction::apply(q, k, v, causal);
}

}  // namespace dreamlora::nn
