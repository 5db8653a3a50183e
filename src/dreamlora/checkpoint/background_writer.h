// CheckpointWriter: commits checkpoints (and prunes) on one background thread so the training loop
// only pays for copying tensors into a snapshot. At most one write is in flight: submitting while the
// previous write runs blocks, and the blocked time is returned so the caller can log the stall.
// A synchronous mode runs the same work on the caller's thread (for comparison in benchmarks).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dreamlora/checkpoint/checkpoint_store.h"

namespace dreamlora::checkpoint {

// --on-checkpoint-error: stop = the next submit / wait_idle / shutdown throws the error;
// continue = the error is reported through the warning handler and training goes on.
enum class ErrorPolicy { kStop, kContinue };
ErrorPolicy parse_error_policy(const std::string& value);  // "stop" | "continue", else Error naming the flag

struct WriterOptions {
  int total_limit = 0;  // --checkpoints-total-limit; <= 0 keeps all
  ErrorPolicy on_error = ErrorPolicy::kStop;
  bool synchronous = false;
};

struct WriteStats {
  int64_t step = 0;
  double stall_seconds = 0;  // time submit() blocked the caller (sync mode: the whole write)
  double write_seconds = 0;  // commit + prune
  uint64_t bytes = 0;        // bytes written for this checkpoint
  bool ok = false;
  bool skipped_existing = false;
  std::string error;
  std::vector<std::string> warnings;
  std::vector<int64_t> pruned;
};

class CheckpointWriter {
 public:
  CheckpointWriter(CheckpointStore& store, WriterOptions options);
  ~CheckpointWriter();  // finishes the write in flight; never throws
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Takes ownership of the snapshot and returns once it is queued (sync mode: once it is written).
  // Returns the seconds the caller was blocked. Throws a pending error under ErrorPolicy::kStop.
  double submit(int64_t step, CheckpointContents snapshot);
  // Queues store.republish(step) like a write (after the one in flight): a resumed run re-publishes its
  // starting checkpoint so an upload its killed predecessor left unfinished is completed, off the
  // training thread. Not counted in history(). Sync mode: runs now.
  void republish(int64_t step);
  // Blocks until no write is in flight; throws a pending error under kStop.
  void wait_idle();
  // wait_idle() then stops the thread; further submits are an error.
  void shutdown();

  std::vector<WriteStats> history() const;  // one entry per finished write, in order
  std::optional<WriteStats> last() const;
  int64_t last_committed_step() const;  // -1 before the first successful write
  bool busy() const;

 private:
  struct Job {
    int64_t step;
    CheckpointContents contents;
    double stall_seconds;
    bool republish_only = false;
  };
  void run();
  WriteStats execute(Job& job);
  void record(WriteStats stats);  // with mu_ held
  void throw_pending_locked(std::unique_lock<std::mutex>& lock);

  CheckpointStore& store_;
  WriterOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Job> pending_;
  bool in_flight_ = false;
  bool stopping_ = false;
  bool stopped_ = false;
  std::optional<std::string> pending_error_;
  std::vector<WriteStats> history_;
  int64_t last_committed_ = -1;
  std::thread thread_;
};

}  // namespace dreamlora::checkpoint
