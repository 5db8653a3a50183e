// The exclusive lock a trainer holds on its output folder for its whole life: flock(2) on
// <dir>/.dreamlora.lock, which the kernel drops when the process dies (even by SIGKILL), so no stale lock
// survives a crash. The file holds the holder's pid, host and start time for the message a second trainer
// prints. It is advisory: only dreamlora processes honour it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace dreamlora::checkpoint {

inline constexpr const char* kLockFileName = ".dreamlora.lock";

struct LockHolder {
  long pid = 0;
  std::string host, started_at;
  std::string describe() const;  // "pid 123 on host-a since 2026-12-01T03:00:00Z"
};

class OutputLock {
 public:
  // Creates dir when missing and takes the lock, or throws dreamlora::Error naming the holder.
  static OutputLock acquire(const std::filesystem::path& dir);
  OutputLock(OutputLock&& other) noexcept;
  OutputLock& operator=(OutputLock&& other) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock();

 private:
  explicit OutputLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// The process holding dir's lock now, or nullopt when nobody does (no lock file, or its lock is free).
std::optional<LockHolder> lock_holder(const std::filesystem::path& dir);

}  // namespace dreamlora::checkpoint
