// Row kernels of the CPU fused attention (nn/fused_attention.cpp): plain C++ on raw fp32 pointers,
// compiled twice — for the baseline x86-64 / any CPU, and with AVX2+FMA on x86-64 — and picked at run
// time by what the CPU supports. No libtorch here, so the AVX2 copy builds without the shared PCH.
#pragma once

#include <cstdint>

namespace dreamlora::nn::kernels {

// One head. q: [Lq, D] (already scaled by 1/sqrt(D)), kT: [D, Lk], vT: [Dv, Lk], row-major; kT and vT
// rows (and dkT, dvT rows in backward) are `ld` floats apart. Choose ld = padded_stride(Lk): rows a
// multiple of 4 KiB apart share cache sets and alias in store forwarding (measured 2.5x slower).
struct AttentionHead {
  const float* q;
  const float* kT;
  const float* vT;
  int64_t lq, lk, d, dv, ld;
  bool causal;  // key j > query i is masked
};

// Lk rounded up to 16 floats, plus 16 floats when that is a multiple of 1 KiB.
inline int64_t padded_stride(int64_t lk) {
  const int64_t ld = (lk + 15) / 16 * 16;
  return ld % 256 == 0 ? ld + 16 : ld;
}

struct RowKernels {
  // Query rows [row_begin, row_end): out[i, :] = softmax(q_i kT) vT^T and lse[i] = log sum_j exp(q_i k_j).
  // scratch: Lk floats.
  void (*forward_rows)(const AttentionHead& h, int64_t row_begin, int64_t row_end, float* out, float* lse,
                       float* scratch);
  // All rows of one head, given out and lse of the forward pass and dout [Lq, Dv]: dq [Lq, D] is written,
  // dkT [D, ld] and dvT [Dv, ld] are accumulated into (zero them first). scratch: 2 * Lk floats.
  void (*backward_head)(const AttentionHead& h, const float* out, const float* lse, const float* dout,
                        float* dq, float* dkT, float* dvT, float* scratch);
  const char* isa;  // "avx2" or "generic"
};

// The fastest kernels this CPU runs; DREAMLORA_ATTN_ISA=generic forces the baseline ones.
const RowKernels& row_kernels();

namespace generic {
extern const RowKernels kKernels;
}
namespace avx2 {
extern const RowKernels kKernels;  // only defined on x86-64
}

}  // namespace dreamlora::nn::kernels
