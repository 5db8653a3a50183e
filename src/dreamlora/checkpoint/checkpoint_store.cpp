// CheckpointStore: crash-safe commit protocol, verification-driven listing, pruning and clean-up, with
// the crash and write-fault hooks the tests use to prove it.
#include "dreamlora/checkpoint/checkpoint_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <regex>
#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"  // read_file
#include "dreamlora/io/safetensors.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// Test hooks

namespace {

constexpr std::pair<CrashPoint, const char*> kCrashPointNames[] = {
    {CrashPoint::kNone, "none"},
    {CrashPoint::kTempCreated, "temp_created"},
    {CrashPoint::kMidFile, "mid_file"},
    {CrashPoint::kFilesWritten, "files_written"},
    {CrashPoint::kManifestWritten, "manifest_written"},
    {CrashPoint::kRenamed, "renamed"},
    {CrashPoint::kCommitted, "committed"},
    {CrashPoint::kPruneRenamed, "prune_renamed"},
};

std::atomic<int> g_crash_at{static_cast<int>(CrashPoint::kNone)};
std::atomic<int> g_fault_nth{0};
std::atomic<int> g_fault_errno{0};
std::atomic<int> g_write_count{0};

bool crash_armed(CrashPoint p) {
  if (static_cast<int>(p) == g_crash_at.load()) return true;
  const char* env = std::getenv("DREAMLORA_TEST_CRASH_AT");
  return env && *env && std::strcmp(env, crash_point_name(p)) == 0;
}

void crash_if_armed(CrashPoint p) {
  if (p != CrashPoint::kNone && crash_armed(p)) ::_exit(99);
}

int errno_from_name(const std::string& name) {
  if (name == "ENOSPC") return ENOSPC;
  if (name == "EIO") return EIO;
  if (name == "EACCES") return EACCES;
  if (name == "EFBIG") return EFBIG;
  if (name == "EDQUOT") return EDQUOT;
  try {
    return std::stoi(name);
  } catch (...) {
    fail(str("DREAMLORA_TEST_FAIL_WRITE: unknown errno '", name,
             "' (expected ENOSPC, EIO, EACCES, EFBIG or a number)"));
  }
}

// The errno the current file write must fail with, or 0. Counts every file write of the process.
int next_write_fault() {
  int count = ++g_write_count;
  if (g_fault_nth.load() > 0) return count == g_fault_nth.load() ? g_fault_errno.load() : 0;
  const char* env = std::getenv("DREAMLORA_TEST_FAIL_WRITE");
  if (!env || !*env) return 0;
  std::string spec(env);
  auto colon = spec.find(':');
  DL_CHECK(colon != std::string::npos, "DREAMLORA_TEST_FAIL_WRITE='", spec, "': expected <n>:<errno>");
  return count == std::stoi(spec.substr(0, colon)) ? errno_from_name(spec.substr(colon + 1)) : 0;
}

}  // namespace

const char* crash_point_name(CrashPoint p) {
  for (const auto& [point, name] : kCrashPointNames)
    if (point == p) return name;
  return "?";
}

CrashPoint parse_crash_point(const std::string& name) {
  for (const auto& [point, n] : kCrashPointNames)
    if (name == n) return point;
  fail(str("unknown checkpoint crash point '", name, "'"));
}

namespace test_hooks {
void set_crash_at(CrashPoint p) {
  g_crash_at = static_cast<int>(p);
}
void set_write_fault(int nth_write, int errno_value) {
  g_write_count = 0;
  g_fault_errno = errno_value;
  g_fault_nth = nth_write;
}
void reset() {
  set_crash_at(CrashPoint::kNone);
  set_write_fault(0, 0);
}
}  // namespace test_hooks

// ---------------------------------------------------------------------------------------------------
// Contents

uint64_t CheckpointFile::estimated_size() const {
  if (!is_tensors) return bytes.size();
  uint64_t total = 4096;  // header
  for (const auto& [name, t] : tensors) total += t.numel() * t.element_size() + name.size() + 64;
  return total;
}

void CheckpointContents::add_bytes(const std::string& name, std::string bytes) {
  CheckpointFile f;
  f.name = name;
  f.bytes = std::move(bytes);
  files.push_back(std::move(f));
}

void CheckpointContents::add_tensors(const std::string& name,
                                     std::vector<std::pair<std::string, torch::Tensor>> tensors,
                                     std::map<std::string, std::string> metadata) {
  CheckpointFile f;
  f.name = name;
  f.is_tensors = true;
  f.tensors = std::move(tensors);
  f.metadata = std::move(metadata);
  files.push_back(std::move(f));
}

uint64_t CheckpointContents::estimated_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files) total += f.estimated_size();
  return total;
}

// ---------------------------------------------------------------------------------------------------
// Low-level file operations

namespace {

// Creates `path` (must not exist), writes all bytes, fsyncs, closes; every failure names the path.
void write_file_synced(const fs::path& path, std::string_view bytes, bool may_crash_midway) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail(str(path.string(), ": cannot create: ", std::strerror(errno)));
  const int injected = next_write_fault();
  const bool crash_midway = may_crash_midway && crash_armed(CrashPoint::kMidFile);
  auto close_and_fail = [&](const std::string& what, int err) {
    ::close(fd);
    std::string hint = err == ENOSPC || err == EDQUOT || err == EFBIG
                           ? " (free disk space, or lower --checkpoints-total-limit)"
                           : "";
    fail(str(path.string(), ": ", what, ": ", std::strerror(err), hint));
  };
  size_t done = 0;
  auto write_until = [&](size_t limit) {
    while (done < limit) {
      ssize_t n = io::sys::write(fd, bytes.data() + done, limit - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) close_and_fail("write failed", n < 0 ? errno : EIO);
      done += static_cast<size_t>(n);
    }
  };
  if (injected || crash_midway) {
    write_until(bytes.size() / 2);
    if (crash_midway) ::_exit(99);
    errno = injected;
    close_and_fail("write failed (injected by test hook)", injected);
  }
  write_until(bytes.size());
  if (io::sys::fsync(fd) != 0) close_and_fail("fsync failed", errno);
  if (::close(fd) != 0) fail(str(path.string(), ": close failed: ", std::strerror(errno)));
}

// fsync of a directory makes the names in it (new files, a rename) durable. Filesystems that cannot
// sync a directory (some FUSE and network mounts) answer EINVAL; that is not a failed write.
void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(str(dir.string(), ": cannot open for fsync: ", std::strerror(errno)));
  int rc = io::sys::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    fail(str(dir.string(), ": fsync failed: ", std::strerror(err)));
}

uint64_t directory_bytes(const fs::path& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    if (it->is_regular_file(ec2)) total += it->file_size(ec2);
  }
  return total;
}

CheckpointInfo inspect_dir(int64_t step, const fs::path& path) {
  CheckpointInfo info;
  info.step = step;
  info.path = path;
  Verification v = verify_checkpoint(path);
  info.valid = v.ok;
  info.reason = v.reason;
  info.bytes = v.ok ? v.bytes : directory_bytes(path);
  return info;
}

// (step, path) of every checkpoint-<N> entry, ascending.
std::vector<std::pair<int64_t, fs::path>> checkpoint_names(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (auto step = parse_checkpoint_dir_name(it->path().filename().string()))
      out.emplace_back(*step, it->path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string temp_name(const char* kind, int64_t step) {
  return str(".checkpoint-", step, ".", kind, "-", ::getpid());
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// CheckpointStore

std::optional<std::string> free_space_warning(const fs::path& dir, uint64_t needed) {
  struct statvfs vfs{};
  if (::statvfs(dir.c_str(), &vfs) != 0) return std::nullopt;
  const uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (avail >= needed) return std::nullopt;
  return str(dir.string(), ": only ", human_bytes(avail), " free, about ", human_bytes(needed),
             " needed; the write will probably fail");
}

CheckpointStore::CheckpointStore(fs::path output_dir) : output_dir_(std::move(output_dir)) {
  warn_ = [](const std::string& m) { std::cerr << "dreamlora: warning: " << m << std::endl; };
}

void CheckpointStore::warn(std::vector<std::string>* sink, const std::string& message) const {
  if (sink) sink->push_back(message);
  if (warn_) warn_(message);
}

std::vector<CheckpointInfo> CheckpointStore::list() const {
  std::vector<CheckpointInfo> out;
  for (const auto& [step, path] : checkpoint_names(output_dir_)) out.push_back(inspect_dir(step, path));
  return out;
}

LatestResult CheckpointStore::latest_valid() const {
  LatestResult r;
  auto names = checkpoint_names(output_dir_);
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    CheckpointInfo info = inspect_dir(it->first, it->second);
    if (info.valid) {
      r.latest = info;
      break;
    }
    r.skipped.push_back(info);
  }
  return r;
}

std::vector<fs::path> CheckpointStore::cleanup_temporaries() const {
  static const std::regex ours(R"(^\.checkpoint-(0|[1-9][0-9]*)\.(tmp|deleting|invalid)-([0-9]+)$)");
  std::vector<fs::path> removed;
  std::error_code ec;
  for (fs::directory_iterator it(output_dir_, ec), end; !ec && it != end; it.increment(ec)) {
    std::smatch m;
    const std::string name = it->path().filename().string();
    if (!std::regex_match(name, m, ours)) continue;
    const long pid = std::stol(m[3].str());
    if (pid != ::getpid() && pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) {
      warn(nullptr, str(it->path().string(), ": left in place, process ", pid,
                        " that owns it is still running (two trainers on one output dir?)"));
      continue;
    }
    std::error_code rm_ec;
    fs::remove_all(it->path(), rm_ec);
    if (rm_ec)
      warn(nullptr, str(it->path().string(), ": cannot remove leftover: ", rm_ec.message()));
    else
      removed.push_back(it->path());
  }
  return removed;
}

CommitResult CheckpointStore::commit(int64_t step, const CheckpointContents& contents) {
  DL_CHECK(step >= 0, "checkpoint step ", step, " is negative");
  std::set<std::string> names;
  for (const auto& f : contents.files) {
    DL_CHECK(is_plain_file_name(f.name), "checkpoint file name '", f.name, "' is not a plain file name");
    DL_CHECK(names.insert(f.name).second, "checkpoint file '", f.name, "' given twice");
  }
  CommitResult r;
  const fs::path final_dir = path_for(step);
  r.path = final_dir;
  std::error_code ec;
  fs::create_directories(output_dir_, ec);
  DL_CHECK(!ec, output_dir_.string(), ": cannot create the output directory: ", ec.message());

  // The same step twice happens on resume + immediate stop; the state at a step is deterministic, so a
  // checkpoint that verifies is kept rather than exposed to a replace.
  const bool exists = fs::exists(fs::symlink_status(final_dir, ec));
  if (exists) {
    Verification v = verify_checkpoint(final_dir);
    if (v.ok) {
      r.skipped_existing = true;
      r.bytes = v.bytes;
      return r;
    }
    warn(&r.warnings, str(final_dir.string(), " exists but is invalid (", v.reason, "); replacing it"));
  }

  if (auto w = free_space_warning(output_dir_, contents.estimated_bytes() + 65536))
    warn(&r.warnings, str("checkpoint ", step, ": ", *w));

  const fs::path tmp = output_dir_ / temp_name("tmp", step);
  fs::remove_all(tmp, ec);
  if (::mkdir(tmp.c_str(), 0755) != 0) fail(str(tmp.string(), ": cannot create: ", std::strerror(errno)));
  Manifest manifest;
  manifest.step = step;
  manifest.created_at = contents.created_at.empty() ? utc_timestamp_now() : contents.created_at;
  manifest.dreamlora_version = dreamlora_version();
  try {
    crash_if_armed(CrashPoint::kTempCreated);
    bool first = true;
    for (const auto& f : contents.files) {
      std::string serialized;
      if (f.is_tensors) serialized = io::safetensors::serialize(f.tensors, f.metadata);
      std::string_view bytes = f.is_tensors ? std::string_view(serialized) : std::string_view(f.bytes);
      write_file_synced(tmp / f.name, bytes, first);
      manifest.files.push_back({f.name, bytes.size(), xxh3_hex(bytes)});
      r.bytes += bytes.size();
      first = false;
    }
    crash_if_armed(CrashPoint::kFilesWritten);
    write_file_synced(tmp / kManifestName, manifest.to_json(), false);
    fsync_dir(tmp);  // the directory entries of the files
    crash_if_armed(CrashPoint::kManifestWritten);
    if (exists) {
      const fs::path aside = output_dir_ / temp_name("invalid", step);
      fs::remove_all(aside, ec);
      if (io::sys::rename(final_dir.c_str(), aside.c_str()) != 0)
        fail(str(final_dir.string(), ": cannot move the invalid checkpoint aside: ", std::strerror(errno)));
    }
    if (io::sys::rename(tmp.c_str(), final_dir.c_str()) != 0)
      fail(str(tmp.string(), ": rename to ", final_dir.string(), " failed: ", std::strerror(errno)));
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  crash_if_armed(CrashPoint::kRenamed);
  fsync_dir(output_dir_);
  crash_if_armed(CrashPoint::kCommitted);
  if (exists) fs::remove_all(output_dir_ / temp_name("invalid", step), ec);

  for (const auto& mirror : mirrors_) {
    try {
      mirror->publish(final_dir, manifest);
    } catch (const std::exception& e) {
      warn(&r.warnings, str("mirror ", mirror->describe(), ": checkpoint ", step,
                            " not copied (the local copy is committed): ", e.what()));
    }
  }
  return r;
}

void CheckpointStore::remove(int64_t step) const {
  const fs::path dir = path_for(step);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  const fs::path aside = output_dir_ / temp_name("deleting", step);
  fs::remove_all(aside, ec);
  if (io::sys::rename(dir.c_str(), aside.c_str()) != 0)
    fail(str(dir.string(), ": cannot move aside for deletion: ", std::strerror(errno)));
  crash_if_armed(CrashPoint::kPruneRenamed);
  fs::remove_all(aside, ec);
  if (ec)
    warn(nullptr, str(aside.string(), ": cannot delete: ", ec.message(), " (removed at the next start)"));
}

PruneResult CheckpointStore::prune(int limit) {
  PruneResult r;
  if (limit <= 0) return r;
  std::vector<CheckpointInfo> all = list();
  auto newest_valid = std::find_if(all.rbegin(), all.rend(), [](const CheckpointInfo& c) { return c.valid; });
  if (newest_valid == all.rend()) return r;  // nothing proven good: delete nothing
  int kept = 0;
  for (auto it = newest_valid; it != all.rend(); ++it) {
    if (it->valid && kept < limit)
      ++kept;
    else
      r.removed.push_back(*it);
  }
  std::reverse(r.removed.begin(), r.removed.end());
  for (const auto& c : r.removed) {
    remove(c.step);
    for (const auto& mirror : mirrors_) {
      try {
        mirror->remove(c.step);
      } catch (const std::exception& e) {
        warn(nullptr,
             str("mirror ", mirror->describe(), ": cannot remove checkpoint ", c.step, ": ", e.what()));
      }
    }
  }
  return r;
}

namespace {

// The manifest of checkpoint directory `dir`, checked to be for `step`; throws naming the file.
Manifest read_manifest(const fs::path& dir, int64_t step) {
  const fs::path path = dir / kManifestName;
  Manifest m = Manifest::parse(io::read_file(path), path.string());
  DL_CHECK(m.step == step, path.string(), ": is for step ", m.step, ", expected ", step);
  return m;
}

}  // namespace

CommitResult CheckpointStore::import_checkpoint(int64_t step, const fs::path& source) const {
  // The copy is verified against the source's manifest before it takes the name: one read of the source.
  const Manifest manifest = read_manifest(source, step);
  CommitResult r;
  const fs::path final_dir = path_for(step);
  r.path = final_dir;
  std::error_code ec;
  if (verify_checkpoint(final_dir).ok) {
    r.skipped_existing = true;
    return r;
  }
  fs::create_directories(output_dir_, ec);
  DL_CHECK(!ec, output_dir_.string(), ": cannot create the output directory: ", ec.message());
  const fs::path tmp = output_dir_ / temp_name("tmp", step);
  fs::remove_all(tmp, ec);
  if (::mkdir(tmp.c_str(), 0755) != 0) fail(str(tmp.string(), ": cannot create: ", std::strerror(errno)));
  try {
    for (const auto& f : manifest.files) {
      write_file_synced(tmp / f.name, io::read_file(source / f.name), false);
      r.bytes += f.size;
    }
    write_file_synced(tmp / kManifestName, io::read_file(source / kManifestName), false);
    fsync_dir(tmp);
    Verification copied = verify_checkpoint(tmp);
    DL_CHECK(copied.ok, source.string(), ": the copy in ", tmp.string(), " does not verify: ", copied.reason);
    const fs::path aside = output_dir_ / temp_name("invalid", step);
    if (fs::exists(fs::symlink_status(final_dir, ec))) {
      fs::remove_all(aside, ec);
      if (io::sys::rename(final_dir.c_str(), aside.c_str()) != 0)
        fail(str(final_dir.string(), ": cannot move the invalid checkpoint aside: ", std::strerror(errno)));
    }
    if (io::sys::rename(tmp.c_str(), final_dir.c_str()) != 0)
      fail(str(tmp.string(), ": rename to ", final_dir.string(), " failed: ", std::strerror(errno)));
    fs::remove_all(aside, ec);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fsync_dir(output_dir_);
  return r;
}

std::vector<std::string> CheckpointStore::republish(int64_t step) const {
  std::vector<std::string> warnings;
  if (mirrors_.empty()) return warnings;
  // Each sink checks every file against the manifest as it copies it: no need to read them twice.
  Manifest manifest;
  try {
    manifest = read_manifest(path_for(step), step);
  } catch (const std::exception& e) {
    warn(&warnings, str(path_for(step).string(), ": not published again: ", e.what()));
    return warnings;
  }
  for (const auto& mirror : mirrors_) {
    try {
      mirror->publish(path_for(step), manifest);
    } catch (const std::exception& e) {
      warn(&warnings, str("mirror ", mirror->describe(), ": checkpoint ", step, " not copied: ", e.what()));
    }
  }
  return warnings;
}

// ---------------------------------------------------------------------------------------------------
// DirectorySink

void CheckpointSink::remove(int64_t step) {
  {
    std::lock_guard<std::mutex> lock(gate_mutex_);
    if (newest_published_ <= step) {
      waiting_removals_.push_back(step);
      return;
    }
  }
  remove_now(step);
}

void CheckpointSink::published(int64_t step) {
  std::vector<int64_t> now;
  {
    std::lock_guard<std::mutex> lock(gate_mutex_);
    newest_published_ = std::max(newest_published_, step);
    auto waits = std::stable_partition(waiting_removals_.begin(), waiting_removals_.end(),
                                       [&](int64_t s) { return s >= newest_published_; });
    now.assign(waits, waiting_removals_.end());
    waiting_removals_.erase(waits, waiting_removals_.end());
  }
  for (int64_t s : now) remove_now(s);
}

void DirectorySink::publish(const fs::path& committed_dir, const Manifest& manifest) {
  CheckpointContents contents;
  for (const auto& f : manifest.files) {
    std::string bytes = io::read_file(committed_dir / f.name);
    DL_CHECK(bytes.size() == f.size && xxh3_hex(bytes) == f.xxh3_64, (committed_dir / f.name).string(),
             ": changed since it was committed; not mirrored");
    contents.add_bytes(f.name, std::move(bytes));
  }
  contents.created_at = manifest.created_at;  // the mirror's manifest is byte for byte the original's
  store_.commit(manifest.step, contents);
  published(manifest.step);
}

void DirectorySink::remove_now(int64_t step) {
  store_.remove(step);
}

void DirectorySink::publish_outputs(const fs::path& output_dir, const std::vector<std::string>& files) {
  for (const auto& name : files) {
    const fs::path target = store_.output_dir() / name;
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    DL_CHECK(!ec, target.parent_path().string(), ": cannot create: ", ec.message());
    io::write_file_durably(target, io::read_file(output_dir / name));
  }
}

std::optional<int64_t> DirectorySink::restore_latest(CheckpointStore& local, int64_t after_step,
                                                     const std::function<void(const std::string&)>& report) {
  LatestResult latest = store_.latest_valid();
  for (const auto& skipped : latest.skipped)
    if (report && skipped.step > after_step)
      report(str("mirror ", describe(), ": skipping checkpoint ", skipped.step, ": ", skipped.reason));
  if (!latest.latest || latest.latest->step <= after_step) return std::nullopt;
  const int64_t step = latest.latest->step;
  local.import_checkpoint(step, latest.latest->path);
  if (report)
    report(
        str("copied checkpoint ", step, " from mirror ", describe(), " to ", local.path_for(step).string()));
  return step;
}

}  // namespace dreamlora::checkpoint
