// AVX2+FMA build of the attention row kernels (CMake adds -mavx2 -mfma to this file on x86-64 only).
#if defined(__x86_64__)
#define DL_ATTENTION_ISA avx2
#define DL_ATTENTION_ISA_NAME "avx2"
#define DL_ATTENTION_VECTOR_BYTES 32
#include "dreamlora/nn/attention_kernels.inc"
#endif
