// Object-storage mirror of checkpoints: S3Sink (a CheckpointSink uploading files then MANIFEST.json
// last), make_mirror() for --mirror URLs, the start-up access check, and remote resume (list,
// download + verify + atomic rename, newest valid remote checkpoint).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/remote/s3_client.h"

namespace dreamlora::checkpoint {

// s3://bucket/some/prefix → {bucket, "some/prefix"} (no leading/trailing '/'; may be empty).
struct S3Location {
  std::string bucket;
  std::string prefix;

  static S3Location parse(const std::string& url);  // throws naming the URL
  std::string url() const;                          // "s3://bucket/prefix"
  // "<prefix>/checkpoint-<N>/" (the object prefix of one checkpoint).
  std::string checkpoint_prefix(int64_t step) const;
  std::string key(int64_t step, const std::string& file_name) const;
};

struct MirrorFailure {
  int64_t step = 0;
  std::string operation;  // "upload" or "remove"
  std::string message;    // with HTTP status and S3 code when the server answered
  long http_status = 0;
  std::string s3_code;
};

// Uploads each committed checkpoint: every file the manifest lists (checked against the manifest
// first), then MANIFEST.json last, so a remote reader never sees a manifest whose files are not all
// there. publish() and remove() never throw: failures are logged through the warning handler, kept
// for summary(), and a checkpoint whose upload failed is tried again at the next publish() while its
// local directory still verifies. Thread-safe (the trainer's writer thread publishes, the main thread
// reads the summary).
class S3Sink : public CheckpointSink {
 public:
  S3Sink(S3Location location, remote::S3Config config);

  std::string describe() const override;
  void publish(const std::filesystem::path& committed_dir, const Manifest& manifest) override;

  // PUTs each file to <prefix>/<relative path>; throws after recording the failure for summary().
  void publish_outputs(const std::filesystem::path& output_dir,
                       const std::vector<std::string>& files) override;
  // latest_remote_valid() into local.output_dir().
  std::optional<int64_t> restore_latest(CheckpointStore& local, int64_t after_step,
                                        const std::function<void(const std::string&)>& report) override;

  // Run once before training. Lists the prefix (s3:ListBucket), writes and deletes a probe object
  // (s3:PutObject, s3:DeleteObject) unless `write_probe` is false. Throws dreamlora::Error
  // (an S3Error) with a message saying what is wrong: wrong credentials (403 InvalidAccessKeyId /
  // SignatureDoesNotMatch), missing permission (403 AccessDenied), missing bucket (404 NoSuchBucket),
  // an unreachable endpoint.
  void check_access(bool write_probe = true) const;

  // Tries the newest failed upload again (call before summary() at the end of training). True when
  // nothing is pending afterwards. Never throws.
  bool retry_failed_upload();

  const S3Location& location() const { return location_; }
  const remote::S3Client& client() const { return *client_; }

  std::vector<MirrorFailure> failures() const;
  int64_t uploaded_checkpoints() const;
  uint64_t uploaded_bytes() const;
  // One line for the end of training, e.g. "mirror s3://b/run: 12 checkpoints uploaded (41.0 MiB),
  // 1 failure: upload of checkpoint 300: ... HTTP 503 SlowDown ...".
  std::string summary() const;

  void set_warning_handler(std::function<void(const std::string&)> handler);
  // Test hook: called after each object is uploaded, with its key (a test stops the server here).
  // A process-wide one for tests of `dreamlora train`: DREAMLORA_TEST_CRASH_AFTER_UPLOADS=<n> makes the
  // process _exit(99) right after its n-th uploaded object (a trainer killed mid-upload).
  void set_after_upload_hook(std::function<void(const std::string& key)> hook);

 protected:
  // Deletes checkpoint-<N>/ remotely: MANIFEST.json first, so a half-deleted checkpoint is never valid.
  void remove_now(int64_t step) override;

 private:
  void after_upload(const std::string& key);
  void upload(const std::filesystem::path& committed_dir, const Manifest& manifest);
  void record_failure(int64_t step, const std::string& operation, const std::exception& e);
  void warn(const std::string& message) const;

  S3Location location_;
  std::unique_ptr<remote::S3Client> client_;
  mutable std::mutex mutex_;  // guards everything below; publish/remove run one at a time
  std::function<void(const std::string&)> warn_;
  std::function<void(const std::string&)> after_upload_;
  std::vector<MirrorFailure> failures_;
  std::vector<std::pair<int64_t, std::filesystem::path>> pending_;  // failed uploads to try again
  int64_t uploaded_checkpoints_ = 0;
  uint64_t uploaded_bytes_ = 0;
  size_t uploaded_output_files_ = 0;
};

// --mirror URL → sink: s3://bucket[/prefix] → S3Sink (S3Config::from_environment(s3_endpoint));
// anything without a scheme → DirectorySink. Other schemes are an error naming --mirror.
std::shared_ptr<CheckpointSink> make_mirror(const std::string& url, const std::string& s3_endpoint = "");
// Start-up check of any sink: S3Sink::check_access(); a DirectorySink's directory is created and
// must be writable. Throws dreamlora::Error with the reason.
void check_mirror_access(CheckpointSink& sink);

// ---------------------------------------------------------------------------------------------------
// Remote resume

struct RemoteCheckpoint {
  int64_t step = 0;
  bool has_manifest = false;
  uint64_t bytes = 0;  // sum of the object sizes under checkpoint-<N>/
  size_t objects = 0;
};

// Every checkpoint-<N>/ prefix found under the location, ascending by step (has_manifest false for an
// interrupted upload or a half-done removal: such a checkpoint is never used).
std::vector<RemoteCheckpoint> list_remote_checkpoints(const remote::S3Client& client,
                                                      const S3Location& location);

struct DownloadResult {
  bool ok = false;
  std::string reason;          // why not, naming the file
  std::filesystem::path path;  // <local_output_dir>/checkpoint-<N> when ok
  uint64_t bytes = 0;
  bool already_local = false;  // a valid local checkpoint-<N> was kept, nothing downloaded
};

// Downloads checkpoint-<step> into the temp sibling <local_output_dir>/.checkpoint-<N>.tmp-<pid>
// (removed by CheckpointStore::cleanup_temporaries after a crash), manifest first, then every listed
// file; verifies sizes and XXH3 (verify_checkpoint); fsyncs; renames to checkpoint-<N> (an invalid
// local checkpoint-<N> is replaced, a valid one kept). Never throws for a defect of the remote
// checkpoint (missing manifest, missing or corrupted object): ok=false with the reason. Throws S3Error
// for access errors (403, missing bucket) and dreamlora::Error for local disk errors.
DownloadResult download_checkpoint(const remote::S3Client& client, const S3Location& location, int64_t step,
                                   const std::filesystem::path& local_output_dir);

struct RemoteSkip {
  int64_t step = 0;
  std::string reason;
};

struct LatestRemoteResult {
  std::optional<DownloadResult> latest;  // the downloaded (or already local) checkpoint
  std::vector<RemoteSkip> skipped;       // newer remote checkpoints that were not usable, newest first
};

// Newest-first over remote checkpoints with step > `after_step` (pass the local latest valid step, or
// -1): the first that downloads and verifies is returned; each one skipped is reported (and through
// `report` when given, e.g. the trainer's log).
LatestRemoteResult latest_remote_valid(const remote::S3Client& client, const S3Location& location,
                                       const std::filesystem::path& local_output_dir, int64_t after_step = -1,
                                       const std::function<void(const std::string&)>& report = nullptr);

}  // namespace dreamlora::checkpoint
