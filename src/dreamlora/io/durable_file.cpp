#include "dreamlora/io/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "dreamlora/common/error.h"

namespace dreamlora {

namespace {
void write_all(int fd, std::string_view bytes, const std::filesystem::path& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    DL_CHECK(n > 0, path.string(), ": write failed: ", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}
}  // namespace

void fsync_path(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DL_CHECK(fd >= 0, path.string(), ": cannot open for fsync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  DL_CHECK(rc == 0, path.string(), ": fsync failed: ", std::strerror(err));
}

namespace {

void write_via_temp(const std::filesystem::path& path, std::string_view bytes, bool durable) {
  auto parent = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  auto tmp = parent / ("." + path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DL_CHECK(fd >= 0, tmp.string(), ": cannot create: ", std::strerror(errno));
  try {
    write_all(fd, bytes, tmp);
    if (durable) DL_CHECK(::fsync(fd) == 0, tmp.string(), ": fsync failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(str(path.string(), ": rename from temp file failed: ", std::strerror(err)));
  }
  if (durable) fsync_path(parent);
}

}  // namespace

void write_file_durably(const std::filesystem::path& path, std::string_view bytes) {
  write_via_temp(path, bytes, true);
}

void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  write_via_temp(path, bytes, false);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  DL_CHECK(in.good(), path.string(), ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace dreamlora
