// MANIFEST.json serialisation, XXH3 checksums and checkpoint verification.
#include "dreamlora/checkpoint/manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"
#include "dreamlora/version.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

const char* dreamlora_version() {
  return DREAMLORA_VERSION;
}

namespace {

std::string hex64(XXH64_hash_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, static_cast<uint64_t>(h));
  return buf;
}

bool is_hex64(const std::string& s) {
  if (s.size() != 16) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string xxh3_hex(std::string_view bytes) {
  return hex64(XXH3_64bits(bytes.data(), bytes.size()));
}

std::string xxh3_file_hex(const fs::path& path, uint64_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(str(path.string(), ": cannot open for reading: ", std::strerror(errno)));
  FdCloser closer{fd};
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  DL_CHECK(state && XXH3_64bits_reset(state.get()) == XXH_OK, "XXH3 state allocation failed");
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(str(path.string(), ": read failed: ", std::strerror(errno)));
    if (n == 0) break;
    XXH3_64bits_update(state.get(), buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  if (size) *size = total;
  return hex64(XXH3_64bits_digest(state.get()));
}

std::string utc_timestamp_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name != kManifestName &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

std::optional<int64_t> parse_checkpoint_dir_name(const std::string& name) {
  static const std::string prefix = "checkpoint-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::string digits = name.substr(prefix.size());
  if (digits.size() > 18 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  for (char c : digits)
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoll(digits);
}

std::string checkpoint_dir_name(int64_t step) {
  return "checkpoint-" + std::to_string(step);
}

std::string Manifest::to_json() const {
  io::Json files_json = io::Json::array();
  for (const auto& f : files)
    files_json.push_back({{"name", f.name}, {"size", f.size}, {"xxh3_64", f.xxh3_64}});
  io::Json j = {{"format_version", format_version},
                {"step", step},
                {"files", files_json},
                {"created_at", created_at},
                {"dreamlora_version", dreamlora_version}};
  return j.dump(2) + "\n";
}

Manifest Manifest::parse(std::string_view text, const std::string& source) {
  io::Json j;
  try {
    j = io::Json::parse(text.begin(), text.end());
  } catch (const std::exception& e) {
    fail(str(source, ": not valid JSON (", e.what(), ")"));
  }
  DL_CHECK(j.is_object(), source, ": expected a JSON object");
  auto need = [&](const char* key, bool ok_type) {
    DL_CHECK(j.contains(key), source, ": key '", key, "' missing");
    DL_CHECK(ok_type, source, ": key '", key, "' has the wrong type: ", j[key].dump());
  };
  need("format_version", j.contains("format_version") && j["format_version"].is_number_integer());
  need("step", j.contains("step") && j["step"].is_number_integer());
  need("files", j.contains("files") && j["files"].is_array());
  Manifest m;
  m.format_version = j["format_version"].get<int>();
  DL_CHECK(m.format_version >= 1 && m.format_version <= kFormatVersion, source, ": format_version ",
           m.format_version, " is not supported by this build (supports 1..", kFormatVersion, ")");
  m.step = j["step"].get<int64_t>();
  DL_CHECK(m.step >= 0, source, ": step ", m.step, " is negative");
  m.created_at = j.value("created_at", std::string());
  m.dreamlora_version = j.value("dreamlora_version", std::string());
  std::set<std::string> seen;
  for (size_t i = 0; i < j["files"].size(); ++i) {
    const io::Json& f = j["files"][i];
    DL_CHECK(f.is_object() && f.contains("name") && f["name"].is_string() && f.contains("size") &&
                 f["size"].is_number_unsigned() && f.contains("xxh3_64") && f["xxh3_64"].is_string(),
             source, ": files[", i, "] needs string 'name', unsigned 'size', string 'xxh3_64': ", f.dump());
    ManifestEntry e{f["name"].get<std::string>(), f["size"].get<uint64_t>(), f["xxh3_64"].get<std::string>()};
    DL_CHECK(is_plain_file_name(e.name), source, ": files[", i, "] name '", e.name,
             "' is not a plain file name inside the checkpoint");
    DL_CHECK(seen.insert(e.name).second, source, ": file '", e.name, "' listed twice");
    DL_CHECK(is_hex64(e.xxh3_64), source, ": file '", e.name, "' xxh3_64 '", e.xxh3_64,
             "' is not 16 lowercase hex digits");
    m.files.push_back(std::move(e));
  }
  return m;
}

uint64_t Manifest::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

Verification verify_checkpoint(const fs::path& dir) {
  Verification v;
  auto bad = [&](std::string reason) {
    v.ok = false;
    v.reason = std::move(reason);
    return v;
  };
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return bad("not a directory");
  const fs::path manifest_path = dir / kManifestName;
  struct stat st{};
  if (::stat(manifest_path.c_str(), &st) != 0)
    return bad(str(kManifestName, " missing (an interrupted write, or not a dreamlora checkpoint)"));
  if (!S_ISREG(st.st_mode)) return bad(str(kManifestName, " is not a regular file"));
  try {
    std::string text;
    {
      int fd = ::open(manifest_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return bad(str(kManifestName, ": cannot open: ", std::strerror(errno)));
      FdCloser closer{fd};
      char buf[65536];
      for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return bad(str(kManifestName, ": read failed: ", std::strerror(errno)));
        if (n == 0) break;
        text.append(buf, static_cast<size_t>(n));
      }
    }
    v.manifest = Manifest::parse(text, kManifestName);
  } catch (const Error& e) {
    return bad(e.what());
  }
  const Manifest& m = *v.manifest;
  if (auto named_step = parse_checkpoint_dir_name(dir.filename().string());
      named_step && *named_step != m.step)
    return bad(
        str(kManifestName, " says step ", m.step, " but the directory is named for step ", *named_step));
  for (const auto& f : m.files) {
    const fs::path p = dir / f.name;
    struct stat fst{};
    if (::lstat(p.c_str(), &fst) != 0) return bad(str(f.name, ": listed in ", kManifestName, " but missing"));
    if (!S_ISREG(fst.st_mode)) return bad(str(f.name, ": not a regular file"));
    if (static_cast<uint64_t>(fst.st_size) != f.size)
      return bad(str(f.name, ": size ", fst.st_size, " bytes, ", kManifestName, " says ", f.size,
                     (static_cast<uint64_t>(fst.st_size) < f.size ? " (truncated)" : "")));
    std::string actual;
    uint64_t read_size = 0;
    try {
      actual = xxh3_file_hex(p, &read_size);
    } catch (const Error& e) {
      return bad(e.what());
    }
    if (actual != f.xxh3_64)
      return bad(str(f.name, ": checksum xxh3_64 ", actual, ", ", kManifestName, " says ", f.xxh3_64,
                     " (file corrupted or changed after the checkpoint was written)"));
    v.bytes += read_size;
  }
  v.ok = true;
  return v;
}

}  // namespace dreamlora::checkpoint
