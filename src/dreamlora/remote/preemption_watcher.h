// PreemptionWatcher (--watch-preemption aws|gcp|azure|URL): a background thread polls the cloud's
// instance metadata for a spot/preemption notice and, on one, calls options.on_notice (stop::StopSources
// turns it into a stop request, so the trainer checkpoints and exits exactly as on SIGTERM).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace dreamlora::remote {

enum class MetadataProvider { kAws, kGcp, kAzure, kUrl };
const char* provider_name(MetadataProvider p);  // "aws", "gcp", "azure", "url"

struct PreemptionWatcherOptions {
  MetadataProvider provider = MetadataProvider::kAws;
  std::string url;             // kUrl: the endpoint polled
  double poll_interval_s = 0;  // 0: the provider's default (aws 5 s, gcp 1 s, azure 1 s, url 2 s)
  double connect_timeout_s = 1;
  double request_timeout_s = 2;
  // Azure enables Scheduled Events on the first request and may take up to two minutes to answer it.
  double azure_first_request_timeout_s = 120;
  // Replaces http://169.254.169.254 / http://metadata.google.internal (tests; empty = the real one,
  // or $DREAMLORA_METADATA_BASE when set).
  std::string base_url;
  std::function<void(const std::string&)> log;  // one line, no "dreamlora: " prefix; default stderr
  // Called once, from the watcher's thread, with "preemption notice from <provider>: <text>".
  std::function<void(const std::string&)> on_notice;

  // "aws" | "gcp" | "azure" | an http:// or https:// URL; anything else is an Error naming the flag.
  static PreemptionWatcherOptions parse(const std::string& flag_text);
};

// The notice in one metadata answer, or nullopt for "no notice". Throws Error on an answer that is
// neither (unexpected status or body). Pure: used by the watcher and the tests.
std::optional<std::string> interpret_metadata_answer(MetadataProvider provider, long http_status,
                                                     const std::string& body,
                                                     const std::string& azure_vm_name = "");

class PreemptionWatcher {
 public:
  // Starts polling at once. An unreachable endpoint is logged once as a warning and polled on.
  explicit PreemptionWatcher(PreemptionWatcherOptions options);
  ~PreemptionWatcher();  // stops the thread promptly, aborting a request in flight
  PreemptionWatcher(const PreemptionWatcher&) = delete;
  PreemptionWatcher& operator=(const PreemptionWatcher&) = delete;

  bool notice_seen() const { return noticed_.load(); }
  std::string notice_text() const;                 // the provider's text; empty before a notice
  int64_t polls() const { return polls_.load(); }  // completed poll attempts (answered or failed)
  const PreemptionWatcherOptions& options() const { return options_; }

 private:
  struct Http;  // libcurl handle and helpers (preemption_watcher.cpp)
  void run();
  std::optional<std::string> poll_once(Http& http);
  bool sleep_for(double seconds);  // false when stopping
  void on_failure(const std::string& what);
  void log(const std::string& line) const;

  PreemptionWatcherOptions options_;
  std::string base_;
  std::string aws_token_;
  double aws_token_expires_ = 0;
  bool aws_token_unavailable_ = false;  // IMDSv1 fallback
  std::string azure_vm_name_;
  bool azure_first_ = true;
  bool warned_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> noticed_{false};
  std::atomic<int64_t> polls_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string notice_;
  std::thread thread_;
};

}  // namespace dreamlora::remote
