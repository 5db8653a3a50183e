// CheckpointWriter: one background thread, one job in flight, errors delivered by policy.
#include "dreamlora/checkpoint/background_writer.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

#include "dreamlora/common/error.h"

namespace dreamlora::checkpoint {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

ErrorPolicy parse_error_policy(const std::string& value) {
  if (value == "stop") return ErrorPolicy::kStop;
  if (value == "continue") return ErrorPolicy::kContinue;
  fail(str("--on-checkpoint-error: expected 'stop' or 'continue', got '", value, "'"));
}

CheckpointWriter::CheckpointWriter(CheckpointStore& store, WriterOptions options)
    : store_(store), options_(options) {
  if (!options_.synchronous) thread_ = std::thread([this] { run(); });
}

CheckpointWriter::~CheckpointWriter() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    std::cerr << "dreamlora: checkpoint writer: " << e.what() << std::endl;
  }
}

WriteStats CheckpointWriter::execute(Job& job) {
  if (job.republish_only) {
    store_.republish(job.step);  // failures are the store's warnings, never an error of the run
    return WriteStats{};
  }
  WriteStats s;
  s.step = job.step;
  s.stall_seconds = job.stall_seconds;
  auto t0 = Clock::now();
  try {
    if (job.contents.prepare) {
      auto prepare = std::move(job.contents.prepare);
      job.contents.prepare = nullptr;
      prepare(job.contents);
    }
    CommitResult c = store_.commit(job.step, job.contents);
    s.bytes = c.bytes;
    s.skipped_existing = c.skipped_existing;
    s.warnings = c.warnings;
    for (const auto& removed : store_.prune(options_.total_limit).removed) s.pruned.push_back(removed.step);
    s.ok = true;
  } catch (const std::exception& e) {
    s.error = str("checkpoint ", job.step, " not written: ", e.what());
  }
  s.write_seconds = seconds_since(t0);
  job.contents = CheckpointContents{};  // free the snapshot as soon as it is on disk
  return s;
}

void CheckpointWriter::record(WriteStats stats) {
  if (stats.ok) {
    last_committed_ = stats.step;
  } else if (options_.on_error == ErrorPolicy::kStop) {
    if (!pending_error_) pending_error_ = stats.error;
  } else {
    std::cerr << "dreamlora: warning: " << stats.error << " (--on-checkpoint-error=continue)" << std::endl;
  }
  history_.push_back(std::move(stats));
}

void CheckpointWriter::throw_pending_locked(std::unique_lock<std::mutex>& lock) {
  if (!pending_error_) return;
  std::string message = *pending_error_;
  pending_error_.reset();
  fail(message);
}

void CheckpointWriter::run() {
  // The lowest priority: woken by submit(), this thread must not preempt the training thread that
  // woke it (measured: 2-3 ms of the step loop per checkpoint when it did); it runs in the gaps of
  // the training thread's work instead, and the wait for it is measured separately (submit()).
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return pending_ || stopping_; });
    if (!pending_) return;  // stopping with nothing queued
    Job job = std::move(*pending_);
    pending_.reset();
    in_flight_ = true;
    lock.unlock();
    WriteStats stats = execute(job);
    lock.lock();
    if (!job.republish_only) record(std::move(stats));
    in_flight_ = false;
    cv_.notify_all();
  }
}

double CheckpointWriter::submit(int64_t step, CheckpointContents snapshot) {
  auto t0 = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  DL_CHECK(!stopped_ && !stopping_, "checkpoint writer: submit(", step, ") after shutdown");
  if (options_.synchronous) {
    throw_pending_locked(lock);
    Job job{step, std::move(snapshot), 0};
    lock.unlock();
    WriteStats stats = execute(job);
    stats.stall_seconds = seconds_since(t0);
    lock.lock();
    record(std::move(stats));
    throw_pending_locked(lock);
    return history_.back().stall_seconds;
  }
  cv_.wait(lock, [&] { return !pending_ && !in_flight_; });
  const double stall = seconds_since(t0);
  throw_pending_locked(lock);
  pending_ = Job{step, std::move(snapshot), stall};
  cv_.notify_all();
  return stall;
}

void CheckpointWriter::republish(int64_t step) {
  std::unique_lock<std::mutex> lock(mu_);
  DL_CHECK(!stopped_ && !stopping_, "checkpoint writer: republish(", step, ") after shutdown");
  Job job{step, CheckpointContents{}, 0, true};
  if (options_.synchronous) {
    lock.unlock();
    execute(job);
    return;
  }
  cv_.wait(lock, [&] { return !pending_ && !in_flight_; });
  pending_ = std::move(job);
  cv_.notify_all();
}

void CheckpointWriter::wait_idle() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !pending_ && !in_flight_; });
  throw_pending_locked(lock);
}

void CheckpointWriter::shutdown() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stopped_) return;
    cv_.wait(lock, [&] { return !pending_ && !in_flight_; });
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  std::unique_lock<std::mutex> lock(mu_);
  stopped_ = true;
  throw_pending_locked(lock);
}

std::vector<WriteStats> CheckpointWriter::history() const {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}

std::optional<WriteStats> CheckpointWriter::last() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (history_.empty()) return std::nullopt;
  return history_.back();
}

int64_t CheckpointWriter::last_committed_step() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_committed_;
}

bool CheckpointWriter::busy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.has_value() || in_flight_;
}

}  // namespace dreamlora::checkpoint
