// Baseline build of the attention row kernels, and the run-time choice between ISAs.
#define DL_ATTENTION_ISA generic
#define DL_ATTENTION_ISA_NAME "generic"
#define DL_ATTENTION_VECTOR_BYTES 16
#include <cstdlib>
#include <string>

#include "dreamlora/nn/attention_kernels.inc"

namespace dreamlora::nn::kernels {

const RowKernels& row_kernels() {
  static const RowKernels* chosen = [] {
    const char* forced = std::getenv("DREAMLORA_ATTN_ISA");
    if (forced && std::string(forced) == "generic") return &generic::kKernels;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &avx2::kKernels;
#endif
    return &generic::kKernels;
  }();
  return *chosen;
}

}  // namespace dreamlora::nn::kernels
