// LD_PRELOAD probe for scripts/gpu-check.sh: reports the CUDA caching allocator's peak (allocated and
// reserved bytes on device 0) of a process that does not report it itself, e.g. the dreamlora trainer.
// A thread polls the allocator's statistics every 20 ms and rewrites $DREAMLORA_CUDA_PEAK_FILE as
// {"allocated_peak_bytes": N, "reserved_peak_bytes": M} whenever a peak grows. Peaks only grow, so polling
// loses nothing, and a process that is killed leaves its last peak behind.
#include <c10/cuda/CUDACachingAllocator.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

void write_peak(const std::string& path, int64_t allocated, int64_t reserved) {
  const std::string tmp = path + ".tmp";
  if (FILE* f = std::fopen(tmp.c_str(), "w")) {
    std::fprintf(f, "{\"allocated_peak_bytes\": %lld, \"reserved_peak_bytes\": %lld}\n",
                 static_cast<long long>(allocated), static_cast<long long>(reserved));
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());
  }
}

void poll_peaks(std::string path) {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  int64_t allocated = -1, reserved = -1;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto* allocator = alloc::get();
    if (allocator == nullptr || !allocator->initialized()) continue;
    try {
      const auto stats = allocator->getDeviceStats(0);
      const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
      const int64_t a = stats.allocated_bytes[agg].peak, r = stats.reserved_bytes[agg].peak;
      if (a != allocated || r != reserved) {
        allocated = a;
        reserved = r;
        write_peak(path, a, r);
      }
    } catch (...) {
      // device 0 not set up yet in this allocator
    }
  }
}

__attribute__((constructor)) void start_peak_probe() {
  const char* path = std::getenv("DREAMLORA_CUDA_PEAK_FILE");
  if (path == nullptr || *path == '\0') return;
  std::thread(poll_peaks, std::string(path)).detach();
}

}  // namespace
