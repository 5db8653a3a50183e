// Text listing of checkpoints for `dreamlora inspect`.
#include "dreamlora/checkpoint/inspect.h"

#include <regex>

#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/checkpoint/output_lock.h"
#include "dreamlora/common/error.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

namespace {

std::string status_text(bool ok, const std::string& reason) {
  return ok ? "valid" : "INVALID: " + reason;
}

InspectReport inspect_one(const fs::path& dir) {
  InspectReport r;
  Verification v = verify_checkpoint(dir);
  r.lines.push_back(str("checkpoint ", dir.string()));
  if (v.manifest) {
    const Manifest& m = *v.manifest;
    r.lines.push_back(
        str("  step ", m.step, "  ", human_bytes(m.total_bytes()), "  ", status_text(v.ok, v.reason)));
    r.lines.push_back(str("  format_version ", m.format_version, "  created_at ", m.created_at,
                          "  dreamlora ", m.dreamlora_version));
    for (const auto& f : m.files)
      r.lines.push_back(str("  file ", f.name, "  ", human_bytes(f.size), "  xxh3_64 ", f.xxh3_64));
  } else {
    r.lines.push_back(str("  ", status_text(false, v.reason)));
  }
  r.exit_status = v.ok ? 0 : 1;
  return r;
}

InspectReport inspect_output_dir(const fs::path& dir) {
  InspectReport r;
  CheckpointStore store(dir);
  r.lines.push_back(str("output directory ", dir.string()));
  const auto holder = lock_holder(dir);
  r.lines.push_back(holder ? str("  locked by a running trainer: ", holder->describe())
                           : std::string("  not locked (no trainer is using it)"));
  auto all = store.list();
  if (all.empty()) r.lines.push_back("  no checkpoints");
  const CheckpointInfo* latest = nullptr;
  for (const auto& c : all) {
    r.lines.push_back(str("  ", c.path.filename().string(), "  step ", c.step, "  ", human_bytes(c.bytes),
                          "  ", status_text(c.valid, c.reason)));
    if (c.valid) latest = &c;
  }
  static const std::regex leftover(R"(^\.checkpoint-[0-9]+\.(tmp|deleting|invalid)-[0-9]+$)");
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (std::regex_match(name, leftover))
      r.lines.push_back(
          str("  leftover ", name, " (an interrupted write; removed when training next starts)"));
  }
  if (latest)
    r.lines.push_back(str("  latest valid: ", latest->path.filename().string(),
                          " (a resume continues from step ", latest->step, ")"));
  else
    r.lines.push_back("  latest valid: none (a resume starts from step 0)");
  return r;
}

}  // namespace

bool looks_like_checkpoint_dir(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  return fs::exists(path / kManifestName, ec) ||
         parse_checkpoint_dir_name(path.filename().string()).has_value();
}

InspectReport inspect_checkpoints(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    InspectReport r;
    r.lines.push_back(str(path.string(), ": not a directory"));
    r.exit_status = 1;
    return r;
  }
  // A trailing slash leaves filename() empty.
  fs::path p = path.filename().empty() ? path.parent_path() : path;
  return looks_like_checkpoint_dir(p) ? inspect_one(p) : inspect_output_dir(p);
}

}  // namespace dreamlora::checkpoint
