#include "dreamlora/train/compute_settings.h"

#include <ATen/Context.h>

#include <cstdlib>

namespace dreamlora::train {

std::string apply_compute_settings(const ComputeSettings& s) {
  auto& ctx = at::globalContext();
  std::string line;
  if (s.deterministic) {
    // cuBLAS is deterministic only with a fixed workspace configuration, read when its first handle is
    // made: set it now unless the user chose one.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
    // warn_only: an op without a deterministic kernel warns (naming itself) instead of ending the run.
    ctx.setDeterministicAlgorithms(true, /*warn_only=*/true);
    ctx.setDeterministicCuDNN(true);
    ctx.setBenchmarkCuDNN(false);
    line = "deterministic algorithms and cuDNN (CUBLAS_WORKSPACE_CONFIG=" +
           std::string(std::getenv("CUBLAS_WORKSPACE_CONFIG")) + ")";
  } else {
    ctx.setDeterministicAlgorithms(false, false);
    ctx.setDeterministicCuDNN(false);
    // Training shapes are fixed, so cuDNN's autotuned convolution pick pays for itself after one step.
    ctx.setBenchmarkCuDNN(true);
    line = "speed-first kernels (cuDNN benchmark on, nondeterministic algorithms allowed)";
  }
  // TF32 for cuBLAS matmuls as diffusers' --allow_tf32; cuDNN convolutions keep libtorch's default (TF32
  // allowed), as in diffusers' scripts. Both setters exist from libtorch 1.13 through 2.x.
  ctx.setAllowTF32CuBLAS(s.allow_tf32);
  line += s.allow_tf32 ? ", TF32 matmuls allowed" : ", fp32 matmuls in full precision";
  return line;
}

}  // namespace dreamlora::train
