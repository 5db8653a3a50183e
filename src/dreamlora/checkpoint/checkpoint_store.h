// CheckpointStore: the checkpoint-<N> directories of one output directory — crash-safe commit,
// listing with verification, latest valid, pruning, removal of our own crash leftovers — plus the
// CheckpointSink interface for mirrors (another directory now; object storage later).
// Model-agnostic: a checkpoint is a set of named files given as bytes or as tensor sets.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/checkpoint/manifest.h"

namespace dreamlora::checkpoint {

// One file of a checkpoint. Tensor sets are serialised to safetensors on the writing thread, so the
// training thread only pays for the copy it made into `tensors`; they must be owned CPU copies
// (e.g. t.detach().to(torch::kCPU, ..., /*copy=*/true)), never views of live parameters.
struct CheckpointFile {
  std::string name;
  std::string bytes;
  bool is_tensors = false;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata;  // safetensors __metadata__
  uint64_t estimated_size() const;
};

struct CheckpointContents {
  std::vector<CheckpointFile> files;  // written in this order, MANIFEST.json after all of them
  // Run by the CheckpointWriter on its thread before anything is written: lets the training thread
  // hand over one flat copy of its state and leave splitting, naming and serialising to the writer.
  std::function<void(CheckpointContents&)> prepare;
  // A copy of a committed checkpoint (a directory mirror) keeps its manifest's creation time; empty: now.
  std::string created_at;

  void add_bytes(const std::string& name, std::string bytes);
  void add_tensors(const std::string& name, std::vector<std::pair<std::string, torch::Tensor>> tensors,
                   std::map<std::string, std::string> metadata = {});
  uint64_t estimated_bytes() const;
};

struct CheckpointInfo {
  int64_t step = 0;
  std::filesystem::path path;
  uint64_t bytes = 0;  // size of the files found in the directory
  bool valid = false;
  std::string reason;  // why it is invalid
};

struct LatestResult {
  std::optional<CheckpointInfo> latest;  // highest step that verifies
  std::vector<CheckpointInfo> skipped;   // higher steps that failed verification, newest first
};

struct CommitResult {
  std::filesystem::path path;
  uint64_t bytes = 0;
  bool skipped_existing = false;      // checkpoint-<N> already existed and verified: left as it was
  std::vector<std::string> warnings;  // low disk space, replaced invalid directory, mirror failures
};

struct PruneResult {
  std::vector<CheckpointInfo> removed;  // oldest first
};

// Phases of commit/prune where a test can make the process die (_exit(99)) to prove crash safety.
enum class CrashPoint {
  kNone,
  kTempCreated,      // "temp_created": empty temp dir exists
  kMidFile,          // "mid_file": half of the first file written
  kFilesWritten,     // "files_written": all files fsynced, no MANIFEST yet
  kManifestWritten,  // "manifest_written": MANIFEST fsynced in the temp dir, not renamed
  kRenamed,          // "renamed": renamed to checkpoint-<N>, parent not yet fsynced
  kCommitted,        // "committed": parent fsynced, before mirrors and pruning
  kPruneRenamed,     // "prune_renamed": an old checkpoint moved aside, not yet deleted
};
const char* crash_point_name(CrashPoint p);
CrashPoint parse_crash_point(const std::string& name);  // throws on unknown names

// A warning when the filesystem holding `dir` has less than `needed` bytes free for us; nullopt when it
// fits or statvfs cannot tell.
std::optional<std::string> free_space_warning(const std::filesystem::path& dir, uint64_t needed);

// Test hooks. Each also reads an environment variable at the moment it applies, so a forked child or
// a `dreamlora train` under a chaos test can set it:
//   DREAMLORA_TEST_CRASH_AT=<phase name>   _exit(99) at that phase
//   DREAMLORA_TEST_FAIL_WRITE=<n>:<errno>  the n-th file write since the process started or the last
//                                          test_hooks::reset() (1-based, counting every checkpoint file
//                                          and manifest; a forked child inherits the count) writes
//                                          half, then fails with errno (ENOSPC, EIO, EACCES, EFBIG, a number)
namespace test_hooks {
void set_crash_at(CrashPoint p);
void set_write_fault(int nth_write, int errno_value);  // nth_write <= 0 disables
void reset();
}  // namespace test_hooks

// Somewhere a committed checkpoint is copied to once it is durable locally. Implementations copy every
// file the manifest lists first and MANIFEST.json last, so a reader of the sink never meets a manifest
// whose files are not all there (an S3 sink: PUT the files, then the manifest).
class CheckpointStore;
class CheckpointSink {
 public:
  virtual ~CheckpointSink() = default;
  virtual std::string describe() const = 0;
  // Copies a committed checkpoint; a step whose copy in the sink is already complete and identical is
  // left alone, so publishing the same checkpoint again (a resumed run catching up on an upload its
  // killed predecessor never finished) costs one check. Implementations call published() once the
  // copy is complete.
  virtual void publish(const std::filesystem::path& committed_dir, const Manifest& manifest) = 0;
  // Mirrors local pruning, but never leaves the sink without its newest complete checkpoint: the
  // removal of `step` waits until a newer checkpoint has been published here (when the newer upload
  // failed, the older remote checkpoint is what a fresh machine resumes from), and is done after the
  // next complete publish. Removals still waiting when the process ends are not done.
  void remove(int64_t step);
  // Copies the finished run's files (paths relative to `output_dir`, e.g. "pytorch_lora_weights.safetensors",
  // "validation/step-100-0.png") to the sink's top level, beside its checkpoint-<N> entries. Throws on
  // failure.
  virtual void publish_outputs(const std::filesystem::path& output_dir,
                               const std::vector<std::string>& files) = 0;
  // Brings the sink's newest checkpoint with step > `after_step` that verifies into `local` (verified,
  // then renamed into place). Returns its step, or nullopt when there is none; each newer checkpoint
  // that was unusable is reported through `report` with the reason.
  virtual std::optional<int64_t> restore_latest(CheckpointStore& local, int64_t after_step,
                                                const std::function<void(const std::string&)>& report) {
    (void)local, (void)after_step, (void)report;
    return std::nullopt;
  }

 protected:
  virtual void remove_now(int64_t step) = 0;
  // Records that checkpoint `step` is complete in the sink and carries out the removals that waited for
  // it. Call without holding a lock that remove_now() takes.
  void published(int64_t step);

 private:
  std::mutex gate_mutex_;
  int64_t newest_published_ = -1;
  std::vector<int64_t> waiting_removals_;
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path output_dir);

  const std::filesystem::path& output_dir() const { return output_dir_; }
  std::filesystem::path path_for(int64_t step) const { return output_dir_ / checkpoint_dir_name(step); }

  // Every checkpoint-<N> directory, ascending by step, each verified. Other names are ignored.
  std::vector<CheckpointInfo> list() const;
  LatestResult latest_valid() const;
  // Removes leftovers of our own interrupted writes and prunes (.checkpoint-<N>.tmp-<pid>,
  // .checkpoint-<N>.deleting-<pid>, .checkpoint-<N>.invalid-<pid>) unless <pid> is another live
  // process. Call once at start-up. Returns what it removed.
  std::vector<std::filesystem::path> cleanup_temporaries() const;

  // Temp sibling → each file written and fsynced → MANIFEST.json → fsync → rename to checkpoint-<N> →
  // fsync the output dir → mirrors. An existing valid checkpoint-<N> is kept (skipped_existing); an
  // invalid one is replaced. On a write error the temp dir is removed, earlier checkpoints are
  // untouched, and dreamlora::Error names the path and the errno text.
  CommitResult commit(int64_t step, const CheckpointContents& contents);
  // Keeps the newest `limit` valid checkpoints; removes older ones (and invalid ones older than the
  // newest valid) oldest first. Never removes the newest valid checkpoint or anything newer than it;
  // limit <= 0 keeps everything.
  PruneResult prune(int limit);
  // Moves checkpoint-<step> aside (.checkpoint-<N>.deleting-<pid>), then deletes it, so a crash
  // midway never leaves a half-deleted directory under a checkpoint name. No-op when absent.
  void remove(int64_t step) const;
  // Copies checkpoint directory `source` (which must verify) in as checkpoint-<step> with the same
  // protocol as commit() — temp sibling, files, its MANIFEST.json unchanged, fsync, verify, rename —
  // without publishing to mirrors. A valid local checkpoint-<step> is kept. Throws naming the path.
  CommitResult import_checkpoint(int64_t step, const std::filesystem::path& source) const;
  // Publishes the valid checkpoint-<step> to every mirror again (see CheckpointSink::publish); a
  // mirror's failure becomes a warning. No-op without mirrors.
  std::vector<std::string> republish(int64_t step) const;
  bool has_mirrors() const { return !mirrors_.empty(); }

  void add_mirror(std::shared_ptr<CheckpointSink> sink) { mirrors_.push_back(std::move(sink)); }
  // Where warnings go (default: stderr with a "dreamlora: warning:" prefix).
  void set_warning_handler(std::function<void(const std::string&)> handler) { warn_ = std::move(handler); }

 private:
  void warn(std::vector<std::string>* sink, const std::string& message) const;

  std::filesystem::path output_dir_;
  std::vector<std::shared_ptr<CheckpointSink>> mirrors_;
  std::function<void(const std::string&)> warn_;
};

// A sink that mirrors checkpoints into another local directory with the same commit protocol (an NFS
// mount, a second disk). Files are copied, then MANIFEST.json, then renamed into place.
class DirectorySink : public CheckpointSink {
 public:
  explicit DirectorySink(std::filesystem::path dir) : store_(std::move(dir)) {}
  std::string describe() const override { return "directory " + store_.output_dir().string(); }
  void publish(const std::filesystem::path& committed_dir, const Manifest& manifest) override;
  void publish_outputs(const std::filesystem::path& output_dir,
                       const std::vector<std::string>& files) override;
  std::optional<int64_t> restore_latest(CheckpointStore& local, int64_t after_step,
                                        const std::function<void(const std::string&)>& report) override;
  const std::filesystem::path& dir() const { return store_.output_dir(); }

 protected:
  void remove_now(int64_t step) override;

 private:
  CheckpointStore store_;
};

}  // namespace dreamlora::checkpoint
