#include "dreamlora/io/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "dreamlora/common/error.h"

namespace dreamlora::io {

// ---------------------------------------------------------------------------------------------------
// Test-only fault injection (DREAMLORA_TEST_FAULT); see the header.

namespace {

enum FaultOp { kFaultWrite = 0, kFaultFsync = 1, kFaultRename = 2, kFaultOps = 3 };
constexpr const char* kFaultOpNames[kFaultOps] = {"write", "fsync", "rename"};

struct FaultRule {
  std::atomic<long> nth{0};  // 0: this op never fails
  std::atomic<int> err{0};
  std::atomic<long> calls{0};
};

std::array<FaultRule, kFaultOps> g_fault_rules;
std::atomic<bool> g_faults_armed{false};
std::once_flag g_fault_env_once;

int fault_errno_from_name(const std::string& name, const std::string& spec) {
  static const std::pair<const char*, int> kNames[] = {{"ENOSPC", ENOSPC}, {"EIO", EIO},
                                                       {"EACCES", EACCES}, {"EFBIG", EFBIG},
                                                       {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
  for (const auto& [n, e] : kNames)
    if (name == n) return e;
  char* end = nullptr;
  long v = std::strtol(name.c_str(), &end, 10);
  DL_CHECK(!name.empty() && *end == '\0' && v > 0, "DREAMLORA_TEST_FAULT='", spec, "': unknown errno '", name,
           "' (expected ENOSPC, EIO, EACCES, EFBIG, EDQUOT, EROFS or a number)");
  return static_cast<int>(v);
}

void arm_faults(const std::string& spec) {
  for (auto& r : g_fault_rules) r.nth = 0, r.err = 0, r.calls = 0;
  bool any = false;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item.empty()) continue;
    std::vector<std::string> parts;
    std::stringstream fields(item);
    for (std::string f; std::getline(fields, f, ':');) parts.push_back(f);
    DL_CHECK(parts.size() == 2 || parts.size() == 3, "DREAMLORA_TEST_FAULT='", spec,
             "': expected <op>[:<errno>]:<n>, e.g. fsync:3 or write:ENOSPC:5");
    int op = -1;
    for (int i = 0; i < kFaultOps; ++i)
      if (parts[0] == kFaultOpNames[i]) op = i;
    DL_CHECK(op >= 0, "DREAMLORA_TEST_FAULT='", spec, "': unknown op '", parts[0],
             "' (expected write, fsync or rename)");
    char* end = nullptr;
    long nth = std::strtol(parts.back().c_str(), &end, 10);
    DL_CHECK(*end == '\0' && nth > 0, "DREAMLORA_TEST_FAULT='", spec, "': call number '", parts.back(),
             "' is not a positive integer");
    g_fault_rules[op].err =
        parts.size() == 3 ? fault_errno_from_name(parts[1], spec) : (op == kFaultWrite ? ENOSPC : EIO);
    g_fault_rules[op].nth = nth;
    any = true;
  }
  g_faults_armed = any;
}

// True (with errno set) when this call of `op` is the one to fail.
bool injected_fault(FaultOp op) {
  std::call_once(g_fault_env_once, [] {
    const char* env = std::getenv("DREAMLORA_TEST_FAULT");
    if (env && *env) arm_faults(env);
  });
  if (!g_faults_armed.load(std::memory_order_relaxed)) return false;
  FaultRule& r = g_fault_rules[op];
  if (r.nth.load() == 0 || ++r.calls != r.nth.load()) return false;
  errno = r.err.load();
  return true;
}

}  // namespace

void set_test_faults(const std::string& spec) {
  std::call_once(g_fault_env_once, [] {});  // the environment no longer applies
  arm_faults(spec);
}

namespace sys {
ssize_t write(int fd, const void* data, size_t size) {
  return injected_fault(kFaultWrite) ? -1 : ::write(fd, data, size);
}
int fsync(int fd) {
  return injected_fault(kFaultFsync) ? -1 : ::fsync(fd);
}
int rename(const char* from, const char* to) {
  return injected_fault(kFaultRename) ? -1 : ::rename(from, to);
}
}  // namespace sys

// ---------------------------------------------------------------------------------------------------

namespace {
void write_all(int fd, std::string_view bytes, const std::filesystem::path& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = sys::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    const int err = n < 0 ? errno : EIO;
    DL_CHECK(n > 0, path.string(), ": write failed: ", std::strerror(err),
             err == ENOSPC || err == EDQUOT ? " (free disk space)" : "");
    done += static_cast<size_t>(n);
  }
}
}  // namespace

void fsync_path(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DL_CHECK(fd >= 0, path.string(), ": cannot open for fsync: ", std::strerror(errno));
  int rc = sys::fsync(fd);
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
    if (durable) DL_CHECK(sys::fsync(fd) == 0, tmp.string(), ": fsync failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (sys::rename(tmp.c_str(), path.c_str()) != 0) {
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

}  // namespace dreamlora::io
