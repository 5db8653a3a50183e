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
#include <mutex>
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

std::mutex g_mutex;
bool g_stopped = false;
std::string g_path;
int64_t g_allocated = -1, g_reserved = -1;
int g_ready_polls = 0;

// Reads the peaks and rewrites the file when they grew. Called with g_mutex held.
void poll_once() {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  auto* allocator = alloc::get();
  // The allocator sets itself up on the process's first CUDA allocation; read it only once it has been
  // set up for a few polls, so this thread never races with that set-up.
  if (allocator == nullptr || !allocator->initialized()) return;
  if (++g_ready_polls < 5) return;
  try {
    const auto stats = allocator->getDeviceStats(0);
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const int64_t a = stats.allocated_bytes[agg].peak, r = stats.reserved_bytes[agg].peak;
    if (a != g_allocated || r != g_reserved) {
      g_allocated = a;
      g_reserved = r;
      write_peak(g_path, a, r);
    }
  } catch (...) {
    // device 0 not set up in this allocator
  }
}

void poll_peaks() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_stopped) return;
    poll_once();
  }
}

// Registered after libc10_cuda's globals (the allocator) were built, so it runs before they are destroyed.
void final_poll() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_stopped) poll_once();
  g_stopped = true;
}

__attribute__((constructor)) void start_peak_probe() {
  const char* path = std::getenv("DREAMLORA_CUDA_PEAK_FILE");
  if (path == nullptr || *path == '\0') return;
  g_path = path;
  std::atexit(final_poll);
  std::thread(poll_peaks).detach();
}

}  // namespace
