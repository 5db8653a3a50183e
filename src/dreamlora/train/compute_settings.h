// Process-wide libtorch settings of a training run: deterministic algorithms (--deterministic) or the
// speed-first defaults, and TF32 matmuls (--allow-tf32). The one place that touches at::globalContext().
#pragma once

#include <string>

namespace dreamlora::train {

struct ComputeSettings {
  bool deterministic = false;  // deterministic kernels + cuDNN: a resumed GPU run ends byte-identical
  bool allow_tf32 = false;     // TF32 tensor cores for fp32 matmuls on Ampere+ (diffusers' --allow_tf32)
};

// Applies the settings before any CUDA work; returns one log line saying what is in effect.
std::string apply_compute_settings(const ComputeSettings& settings);

}  // namespace dreamlora::train
