// LD_PRELOAD shim for tests: a disk that fills while one file is written. With
//   DREAMLORA_ENOSPC_PATH=<text>        every write(2) to a file whose path contains <text>
//   DREAMLORA_ENOSPC_AFTER=<bytes>      (default 0) once that many bytes went to such files
// writes as much as still fits, then fails with ENOSPC, as a full file system does. Other files and
// processes without the variable are untouched. Built by tests/CMakeLists.txt; used by
// tests/integration/disk_full_train_test.cpp, which cannot know in advance how many writes come before
// the one it wants to fail (the DREAMLORA_TEST_FAULT hook counts calls).
#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

using WriteFn = ssize_t (*)(int, const void*, size_t);
WriteFn real_write = nullptr;
unsigned long long written_to_matching = 0;

bool path_matches(int fd, const char* text) {
  char link[64], path[PATH_MAX];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return false;
  path[n] = '\0';
  return std::strstr(path, text) != nullptr;
}

}  // namespace

extern "C" ssize_t write(int fd, const void* data, size_t size) {
  if (!real_write) real_write = reinterpret_cast<WriteFn>(dlsym(RTLD_NEXT, "write"));
  const char* text = std::getenv("DREAMLORA_ENOSPC_PATH");
  if (!text || !*text || fd <= 2 || !path_matches(fd, text)) return real_write(fd, data, size);
  const char* after = std::getenv("DREAMLORA_ENOSPC_AFTER");
  const unsigned long long limit = after ? std::strtoull(after, nullptr, 10) : 0;
  if (written_to_matching >= limit) {
    errno = ENOSPC;
    return -1;
  }
  if (size > limit - written_to_matching) size = static_cast<size_t>(limit - written_to_matching);
  ssize_t n = real_write(fd, data, size);
  if (n > 0) written_to_matching += static_cast<unsigned long long>(n);
  return n;
}
