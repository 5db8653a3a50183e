// Remote resume: list the checkpoints of an S3 location, download one through a temp sibling with the
// same verify-then-rename protocol as a local commit, and find the newest remote checkpoint that verifies.
#include <unistd.h>

#include <cstring>
#include <map>

#include "dreamlora/checkpoint/s3_sink.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

namespace {

// A 404 that means "this object is not there" rather than "this bucket is not there".
bool missing_object(const remote::S3Error& e) {
  return e.http_status == 404 && e.s3_code != "NoSuchBucket";
}

std::string temp_sibling(const char* kind, int64_t step) {
  return str(".checkpoint-", step, ".", kind, "-", ::getpid());
}

DownloadResult not_usable(std::string reason) {
  DownloadResult r;
  r.reason = std::move(reason);
  return r;
}

// Downloads every listed file and the manifest into `tmp`; returns a reason when the remote copy is
// unusable, empty when all arrived.
std::string fetch_into(const remote::S3Client& client, const S3Location& loc, const Manifest& manifest,
                       const std::string& manifest_bytes, const fs::path& tmp) {
  for (const auto& f : manifest.files) {
    const std::string key = loc.key(manifest.step, f.name);
    try {
      client.get_to_file(loc.bucket, key, tmp / f.name);
    } catch (const remote::S3Error& e) {
      if (missing_object(e))
        return str(f.name, ": listed in MANIFEST.json but missing remotely (s3://", loc.bucket, "/", key,
                   ")");
      throw;
    }
    io::fsync_path(tmp / f.name);
  }
  io::write_file_durably(tmp / kManifestName, manifest_bytes);
  return "";
}

// tmp → final_dir, moving an invalid existing final_dir aside first; then fsync of the parent.
void rename_into_place(const fs::path& tmp, const fs::path& final_dir, int64_t step) {
  const fs::path parent = final_dir.parent_path();
  std::error_code ec;
  const fs::path aside = parent / temp_sibling("invalid", step);
  const bool replace = fs::exists(fs::symlink_status(final_dir, ec));
  if (replace) {
    fs::remove_all(aside, ec);
    if (::rename(final_dir.c_str(), aside.c_str()) != 0)
      fail(str(final_dir.string(), ": cannot move the invalid checkpoint aside: ", std::strerror(errno)));
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0)
    fail(str(tmp.string(), ": rename to ", final_dir.string(), " failed: ", std::strerror(errno)));
  io::fsync_path(parent);
  if (replace) fs::remove_all(aside, ec);
}

}  // namespace

std::vector<RemoteCheckpoint> list_remote_checkpoints(const remote::S3Client& client,
                                                      const S3Location& location) {
  const std::string base = location.prefix.empty() ? "" : location.prefix + "/";
  std::map<int64_t, RemoteCheckpoint> by_step;
  for (const auto& obj : client.list(location.bucket, base + "checkpoint-")) {
    const std::string rest = obj.key.substr(base.size());
    const auto slash = rest.find('/');
    if (slash == std::string::npos) continue;
    const auto step = parse_checkpoint_dir_name(rest.substr(0, slash));
    const std::string file = rest.substr(slash + 1);
    if (!step || file.empty() || file.find('/') != std::string::npos) continue;
    RemoteCheckpoint& rc = by_step[*step];
    rc.step = *step;
    rc.has_manifest |= file == kManifestName;
    rc.bytes += obj.size;
    ++rc.objects;
  }
  std::vector<RemoteCheckpoint> out;
  for (auto& [step, rc] : by_step) out.push_back(rc);
  return out;
}

DownloadResult download_checkpoint(const remote::S3Client& client, const S3Location& location, int64_t step,
                                   const fs::path& local_output_dir) {
  const fs::path final_dir = local_output_dir / checkpoint_dir_name(step);
  std::error_code ec;
  fs::create_directories(local_output_dir, ec);
  DL_CHECK(!ec, local_output_dir.string(), ": cannot create the output directory: ", ec.message());
  if (fs::exists(final_dir, ec)) {
    Verification local = verify_checkpoint(final_dir);
    if (local.ok) {
      DownloadResult r;
      r.ok = r.already_local = true;
      r.path = final_dir;
      r.bytes = local.bytes;
      return r;
    }
  }

  const std::string manifest_key = location.key(step, kManifestName);
  const std::string where = str("s3://", location.bucket, "/", location.checkpoint_prefix(step));
  std::optional<std::string> fetched = client.get_bytes_if_exists(location.bucket, manifest_key);
  if (!fetched) return not_usable(str(where, "MANIFEST.json missing (an interrupted upload or removal)"));
  const std::string manifest_bytes = std::move(*fetched);
  Manifest manifest;
  try {
    manifest = Manifest::parse(manifest_bytes, where + kManifestName);
  } catch (const Error& e) {
    return not_usable(e.what());
  }
  if (manifest.step != step)
    return not_usable(str(where, "MANIFEST.json: step ", manifest.step, ", expected ", step));

  const fs::path tmp = local_output_dir / temp_sibling("tmp", step);
  fs::remove_all(tmp, ec);
  DL_CHECK(fs::create_directory(tmp, ec) && !ec, tmp.string(), ": cannot create: ", ec.message());
  try {
    std::string reason = fetch_into(client, location, manifest, manifest_bytes, tmp);
    Verification v;
    if (reason.empty()) {
      v = verify_checkpoint(tmp);
      if (!v.ok) reason = str(where, ": downloaded copy does not verify: ", v.reason);
    }
    if (!reason.empty()) {
      fs::remove_all(tmp, ec);
      return not_usable(reason);
    }
    io::fsync_path(tmp);
    rename_into_place(tmp, final_dir, step);
    DownloadResult r;
    r.ok = true;
    r.path = final_dir;
    r.bytes = v.bytes;
    return r;
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

LatestRemoteResult latest_remote_valid(const remote::S3Client& client, const S3Location& location,
                                       const fs::path& local_output_dir, int64_t after_step,
                                       const std::function<void(const std::string&)>& report) {
  LatestRemoteResult result;
  auto skip = [&](int64_t step, const std::string& reason) {
    result.skipped.push_back({step, reason});
    if (report)
      report(str("remote checkpoint ", location.url(), "/", checkpoint_dir_name(step), " skipped: ", reason));
  };
  const std::vector<RemoteCheckpoint> all = list_remote_checkpoints(client, location);
  for (auto it = all.rbegin(); it != all.rend() && it->step > after_step; ++it) {
    if (!it->has_manifest) {
      skip(it->step, "no MANIFEST.json (an interrupted upload or removal)");
      continue;
    }
    DownloadResult d = download_checkpoint(client, location, it->step, local_output_dir);
    if (d.ok) {
      result.latest = d;
      break;
    }
    skip(it->step, d.reason);
  }
  return result;
}

}  // namespace dreamlora::checkpoint
