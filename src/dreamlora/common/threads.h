// Owns the two CPU thread pools at start-up: libtorch's intra-op (OpenMP) pool and OpenBLAS's own pool.
// Left alone, libtorch uses 1 thread here and OpenBLAS starts one per core that fights OpenMP.
#pragma once

namespace dreamlora {

struct ThreadSettings {
  int torch_threads = 0;  // 0: one per hardware core
  int blas_threads = 1;   // OpenBLAS pool size; 1 avoids oversubscription with libtorch's pool
};

// Applies the settings; returns the number of libtorch intra-op threads in force.
int configure_threads(const ThreadSettings& settings);

// Keeps large freed buffers in the heap instead of returning them to the kernel: without it every
// attention score matrix is a fresh mmap whose pages the kernel zeroes again (measured: system time
// equal to user time in a training step).
void tune_allocator();

// Number of hardware threads the process may use (affinity-aware).
int available_cores();

}  // namespace dreamlora
