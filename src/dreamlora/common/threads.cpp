#include "dreamlora/common/threads.h"

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>
#include <torch/torch.h>

#include <thread>

namespace dreamlora {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

// OpenBLAS is reached through the libblas.so.3 alternative, so look its setter up at run time
// rather than link against it: with another BLAS installed the call is simply skipped.
static void set_blas_threads(int n) {
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(n);
}

void tune_allocator() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_ARENA_MAX, 4);
}

int configure_threads(const ThreadSettings& settings) {
  int torch_threads = settings.torch_threads > 0 ? settings.torch_threads : available_cores();
  torch::set_num_threads(torch_threads);
  set_blas_threads(settings.blas_threads > 0 ? settings.blas_threads : 1);
  return torch::get_num_threads();
}

}  // namespace dreamlora
