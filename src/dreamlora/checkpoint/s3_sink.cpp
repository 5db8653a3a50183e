// S3Sink: uploads committed checkpoints (files, then MANIFEST.json), mirrors pruning (manifest deleted
// first), checks access at start-up, and records failures instead of throwing into the trainer.
#include "dreamlora/checkpoint/s3_sink.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "dreamlora/io/durable_file.h"

namespace dreamlora::checkpoint {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// S3Location

S3Location S3Location::parse(const std::string& url) {
  DL_CHECK(url.rfind("s3://", 0) == 0, "--mirror '", url, "': expected s3://bucket[/prefix]");
  std::string rest = url.substr(5);
  const auto slash = rest.find('/');
  S3Location loc;
  loc.bucket = rest.substr(0, slash);
  loc.prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  while (!loc.prefix.empty() && loc.prefix.back() == '/') loc.prefix.pop_back();
  while (!loc.prefix.empty() && loc.prefix.front() == '/') loc.prefix.erase(0, 1);
  DL_CHECK(!loc.bucket.empty(), "--mirror '", url, "': no bucket name (expected s3://bucket[/prefix])");
  DL_CHECK(loc.bucket.size() >= 3 && loc.bucket.size() <= 63 &&
               loc.bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") == std::string::npos,
           "--mirror '", url, "': bucket name '", loc.bucket,
           "' is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '.', '-')");
  DL_CHECK(loc.prefix.find("//") == std::string::npos, "--mirror '", url,
           "': empty path segment in the prefix");
  return loc;
}

std::string S3Location::url() const {
  return "s3://" + bucket + (prefix.empty() ? "" : "/" + prefix);
}

std::string S3Location::checkpoint_prefix(int64_t step) const {
  return (prefix.empty() ? "" : prefix + "/") + checkpoint_dir_name(step) + "/";
}

std::string S3Location::key(int64_t step, const std::string& file_name) const {
  return checkpoint_prefix(step) + file_name;
}

// ---------------------------------------------------------------------------------------------------
// S3Sink

S3Sink::S3Sink(S3Location location, remote::S3Config config)
    : location_(std::move(location)), client_(std::make_unique<remote::S3Client>(std::move(config))) {
  warn_ = [](const std::string& m) { std::cerr << "dreamlora: warning: " << m << std::endl; };
}

std::string S3Sink::describe() const {
  return str(location_.url(), " (", client_->config().describe(), ")");
}

void S3Sink::set_warning_handler(std::function<void(const std::string&)> handler) {
  std::lock_guard<std::mutex> lock(mutex_);
  warn_ = std::move(handler);
}

void S3Sink::set_after_upload_hook(std::function<void(const std::string&)> hook) {
  std::lock_guard<std::mutex> lock(mutex_);
  after_upload_ = std::move(hook);
}

void S3Sink::after_upload(const std::string& key) {
  if (after_upload_) after_upload_(key);
  static int uploads = 0;
  static const char* crash_after = std::getenv("DREAMLORA_TEST_CRASH_AFTER_UPLOADS");
  if (crash_after && ++uploads == std::atoi(crash_after)) {
    std::cerr << "dreamlora: DREAMLORA_TEST_CRASH_AFTER_UPLOADS: exiting after uploading " << key
              << std::endl;
    ::_exit(99);
  }
}

void S3Sink::warn(const std::string& message) const {
  if (warn_) warn_(message);
}

void S3Sink::record_failure(int64_t step, const std::string& operation, const std::exception& e) {
  MirrorFailure f;
  f.step = step;
  f.operation = operation;
  f.message = e.what();
  if (const auto* s3 = dynamic_cast<const remote::S3Error*>(&e)) {
    f.http_status = s3->http_status;
    f.s3_code = s3->s3_code;
  }
  failures_.push_back(f);
  if (step < 0) {  // not a checkpoint: the final outputs
    warn(str("mirror ", location_.url(), ": ", operation, " failed: ", f.message));
    return;
  }
  warn(str("mirror ", location_.url(), ": ", operation, " of checkpoint ", step, " failed: ", f.message,
           operation == "upload"
               ? " (the local checkpoint is committed; the next checkpoint is uploaded as usual)"
               : ""));
}

void S3Sink::publish(const fs::path& committed_dir, const Manifest& manifest) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      upload(committed_dir, manifest);
      ++uploaded_checkpoints_;
      // An older failed upload is superseded by this newer remote checkpoint.
      pending_.clear();
    } catch (const std::exception& e) {
      record_failure(manifest.step, "upload", e);
      pending_.assign(1, {manifest.step, committed_dir});
      return;
    }
  }
  published(manifest.step);
}

void S3Sink::upload(const fs::path& dir, const Manifest& manifest) {
  const int64_t step = manifest.step;
  const std::string manifest_key = location_.key(step, kManifestName);
  // The committed MANIFEST.json as written locally (the bytes a reader checks), else a re-serialisation.
  std::string manifest_bytes = manifest.to_json();
  std::error_code ec;
  if (fs::exists(dir / kManifestName, ec)) {
    std::string local = io::read_file(dir / kManifestName);
    try {
      if (Manifest::parse(local, (dir / kManifestName).string()).step == step)
        manifest_bytes = std::move(local);
    } catch (const Error&) {
    }
  }
  // A resumed run re-publishes the step it stopped at: nothing to do when the remote copy is the same.
  // Otherwise the old manifest goes first so it never vouches for files being replaced.
  if (auto remote = client_->get_bytes_if_exists(location_.bucket, manifest_key)) {
    if (*remote == manifest_bytes) return;
    client_->remove(location_.bucket, manifest_key);
  }
  uint64_t bytes = 0;
  for (const auto& f : manifest.files) {
    const fs::path path = dir / f.name;
    uint64_t size = 0;
    const std::string hash = xxh3_file_hex(path, &size);
    DL_CHECK(size == f.size && hash == f.xxh3_64, path.string(), ": changed since it was committed (size ",
             size, ", xxh3 ", hash, "; MANIFEST.json says ", f.size, ", ", f.xxh3_64, "); not mirrored");
    client_->put_file(location_.bucket, location_.key(step, f.name), path);
    bytes += size;
    after_upload(location_.key(step, f.name));
  }
  client_->put_bytes(location_.bucket, manifest_key, manifest_bytes);
  after_upload(manifest_key);
  uploaded_bytes_ += bytes + manifest_bytes.size();
}

void S3Sink::remove_now(int64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    client_->remove(location_.bucket, location_.key(step, kManifestName));
    for (const auto& obj : client_->list(location_.bucket, location_.checkpoint_prefix(step)))
      client_->remove(location_.bucket, obj.key);
  } catch (const std::exception& e) {
    record_failure(step, "remove", e);
  }
  pending_.erase(
      std::remove_if(pending_.begin(), pending_.end(), [&](const auto& p) { return p.first == step; }),
      pending_.end());
}

void S3Sink::publish_outputs(const fs::path& output_dir, const std::vector<std::string>& files) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    for (const auto& name : files) {
      const std::string key = (location_.prefix.empty() ? "" : location_.prefix + "/") + name;
      client_->put_file(location_.bucket, key, output_dir / name);
      uploaded_bytes_ += fs::file_size(output_dir / name);
      ++uploaded_output_files_;
      after_upload(key);
    }
  } catch (const std::exception& e) {
    record_failure(-1, "upload of the final outputs", e);
    throw;
  }
}

std::optional<int64_t> S3Sink::restore_latest(CheckpointStore& local, int64_t after_step,
                                              const std::function<void(const std::string&)>& report) {
  auto got = latest_remote_valid(*client_, location_, local.output_dir(), after_step, report);
  if (!got.latest) return std::nullopt;
  const auto step = parse_checkpoint_dir_name(got.latest->path.filename().string());
  return step;
}

bool S3Sink::retry_failed_upload() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (pending_.empty()) return true;
  const auto [step, dir] = pending_.back();
  Verification v = verify_checkpoint(dir);
  if (!v.ok || !v.manifest) {
    warn(str("mirror ", location_.url(), ": checkpoint ", step, " not retried: ", dir.string(), " ",
             v.ok ? "has no manifest" : v.reason));
    pending_.clear();
    return false;
  }
  try {
    upload(dir, *v.manifest);
    ++uploaded_checkpoints_;
    pending_.clear();
  } catch (const std::exception& e) {
    record_failure(step, "upload", e);
    return false;
  }
  lock.unlock();
  published(step);
  return true;
}

void S3Sink::check_access(bool write_probe) const {
  auto rethrow = [&](const remote::S3Error& e, const std::string& what) {
    throw remote::S3Error(
        str("mirror ", location_.url(), " (", client_->config().describe(), "): ", what, ": ", e.what()),
        e.http_status, e.s3_code, e.network);
  };
  const std::string list_prefix = location_.prefix.empty() ? "" : location_.prefix + "/";
  try {
    client_->list(location_.bucket, list_prefix, 1, 1);
  } catch (const remote::S3Error& e) {
    rethrow(e, "cannot list the bucket (needs s3:ListBucket)");
  }
  if (!write_probe) return;
  const std::string probe = str(list_prefix, ".dreamlora-access-check-", ::getpid());
  try {
    client_->put_bytes(location_.bucket, probe, "dreamlora mirror access check; safe to delete\n");
  } catch (const remote::S3Error& e) {
    rethrow(e, "cannot write (needs s3:PutObject)");
  }
  try {
    client_->remove(location_.bucket, probe);
  } catch (const remote::S3Error& e) {
    rethrow(e, str("cannot delete the probe object ", probe, " (needs s3:DeleteObject)"));
  }
}

std::vector<MirrorFailure> S3Sink::failures() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failures_;
}

int64_t S3Sink::uploaded_checkpoints() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return uploaded_checkpoints_;
}

uint64_t S3Sink::uploaded_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return uploaded_bytes_;
}

std::string S3Sink::summary() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string s = str("mirror ", location_.url(), ": ", uploaded_checkpoints_, " checkpoint",
                      uploaded_checkpoints_ == 1 ? "" : "s",
                      uploaded_output_files_ > 0 ? str(" and ", uploaded_output_files_, " output files") : "",
                      " uploaded (", human_bytes(uploaded_bytes_), ")");
  if (failures_.empty()) return s + ", no failures";
  s += str(", ", failures_.size(), failures_.size() == 1 ? " failure:" : " failures:");
  for (const auto& f : failures_)
    s += f.step < 0 ? str("\n  ", f.operation, ": ", f.message)
                    : str("\n  ", f.operation, " of checkpoint ", f.step, ": ", f.message);
  if (!pending_.empty())
    s += str("\n  the newest checkpoint (", pending_.back().first, ") is NOT in ", location_.url(),
             "; copy it by hand or resume here");
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Factory and start-up check

std::shared_ptr<CheckpointSink> make_mirror(const std::string& url, const std::string& s3_endpoint) {
  DL_CHECK(!url.empty(), "--mirror: empty URL");
  if (url.rfind("s3://", 0) == 0)
    return std::make_shared<S3Sink>(S3Location::parse(url), remote::S3Config::from_environment(s3_endpoint));
  DL_CHECK(url.find("://") == std::string::npos, "--mirror '", url,
           "': unsupported scheme; expected s3://bucket[/prefix] or a local directory");
  return std::make_shared<DirectorySink>(fs::path(url));
}

void check_mirror_access(CheckpointSink& sink) {
  if (auto* s3 = dynamic_cast<S3Sink*>(&sink)) return s3->check_access();
  // DirectorySink describes itself as "directory <path>" (checkpoint_store.h).
  const std::string d = sink.describe();
  if (!dynamic_cast<DirectorySink*>(&sink) || d.rfind("directory ", 0) != 0) return;
  const fs::path dir = d.substr(10);
  std::error_code ec;
  fs::create_directories(dir, ec);
  DL_CHECK(!ec, "--mirror ", dir.string(), ": cannot create the directory: ", ec.message());
  const fs::path probe = dir / str(".dreamlora-access-check-", ::getpid());
  {
    std::ofstream out(probe);
    out << "probe\n";
    DL_CHECK(out.good(), "--mirror ", dir.string(), ": directory is not writable");
  }
  fs::remove(probe, ec);
}

}  // namespace dreamlora::checkpoint
