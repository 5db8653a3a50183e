#include "dreamlora/checkpoint/output_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>
#include <thread>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

namespace {

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

std::string read_all(int fd) {
  std::string text;
  char buf[512];
  ssize_t n;
  off_t at = 0;
  while ((n = pread(fd, buf, sizeof(buf), at)) > 0) {
    text.append(buf, static_cast<size_t>(n));
    at += n;
  }
  return text;
}

LockHolder parse_holder(const std::string& text) {
  LockHolder h;
  std::istringstream in(text);
  std::string key, value;
  while (in >> key >> value) {
    if (key == "pid") h.pid = std::atol(value.c_str());
    if (key == "host") h.host = value;
    if (key == "started_at") h.started_at = value;
  }
  return h;
}

// inspect probes with a shared lock for an instant; a trainer starting at that moment retries briefly
// instead of reporting inspect as the holder.
bool try_lock(int fd, int operation) {
  for (int attempt = 0; attempt < 10; ++attempt) {
    if (flock(fd, operation | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace

std::string LockHolder::describe() const {
  if (pid == 0) return "a process that has not written its details yet";
  return str("pid ", pid, " on ", host.empty() ? "an unknown host" : host, " since ", started_at);
}

OutputLock OutputLock::acquire(const fs::path& dir) {
  fs::create_directories(dir);
  const fs::path path = dir / kLockFileName;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  DL_CHECK(fd >= 0, path.string(), ": cannot open the output folder's lock file: ", std::strerror(errno));
  if (!try_lock(fd, LOCK_EX)) {
    const int err = errno;
    const std::string holder = parse_holder(read_all(fd)).describe();
    ::close(fd);
    DL_CHECK(err == EWOULDBLOCK || err == EINTR, path.string(),
             ": cannot lock the output folder: ", std::strerror(err));
    fail(str("--output-dir ", dir.string(), " is in use by another trainer (", holder, "; lock ",
             path.string(), "). Wait for it to finish, stop it, or use another --output-dir."));
  }
  const std::string details = str("pid ", static_cast<long>(getpid()), "\nhost ", host_name(),
                                  "\nstarted_at ", utc_timestamp_now(), "\n");
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, details.data(), details.size(), 0) != static_cast<ssize_t>(details.size())) {
    const int err = errno;
    ::close(fd);
    fail(str(path.string(), ": cannot write the lock holder's details: ", std::strerror(err)));
  }
  return OutputLock(fd);
}

OutputLock::OutputLock(OutputLock&& other) noexcept : fd_(other.fd_) {
  other.fd_ = -1;
}

OutputLock& OutputLock::operator=(OutputLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

// Closing the descriptor releases the flock; the file stays (removing it would race with a new holder).
OutputLock::~OutputLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<LockHolder> lock_holder(const fs::path& dir) {
  int fd = ::open((dir / kLockFileName).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::optional<LockHolder> holder;
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
  } else if (errno == EWOULDBLOCK) {
    holder = parse_holder(read_all(fd));
  }
  ::close(fd);
  return holder;
}

}  // namespace dreamlora::checkpoint
