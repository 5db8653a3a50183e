// MANIFEST.json of a checkpoint directory (format version, step, every file with size and XXH3-64
// checksum) and verify_checkpoint(), the one test that decides whether a checkpoint may be used.
// Model-agnostic: it knows nothing about what the listed files contain.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dreamlora::checkpoint {

constexpr int kFormatVersion = 1;
constexpr const char* kManifestName = "MANIFEST.json";
const char* dreamlora_version();

struct ManifestEntry {
  std::string name;     // a plain file name inside the checkpoint directory
  uint64_t size = 0;    // bytes
  std::string xxh3_64;  // 16 lowercase hex digits, the canonical (big-endian) form `xxhsum -H3` prints
};

struct Manifest {
  int format_version = kFormatVersion;
  int64_t step = 0;
  std::vector<ManifestEntry> files;
  std::string created_at;  // ISO 8601 UTC, e.g. 2026-11-27T23:10:05Z
  std::string dreamlora_version;

  std::string to_json() const;
  // Throws dreamlora::Error naming `source` and the offending key on any defect.
  static Manifest parse(std::string_view text, const std::string& source);
  uint64_t total_bytes() const;
};

std::string xxh3_hex(std::string_view bytes);
// Streams the file; also returns its size. Throws dreamlora::Error naming the path on read errors.
std::string xxh3_file_hex(const std::filesystem::path& path, uint64_t* size = nullptr);
std::string utc_timestamp_now();
std::string human_bytes(uint64_t bytes);  // "3.1 MiB"

// A file name is acceptable in a manifest only as a plain name: no separators, not "." / "..",
// not the manifest itself. Keeps a hostile manifest from pointing outside its directory.
bool is_plain_file_name(const std::string& name);

// "checkpoint-<N>" with N in canonical decimal form (no sign, no leading zeros): step N; else nullopt.
// Names that do not match exactly (checkpoint-abc, checkpoint-007, checkpoint-final-backup) are not ours.
std::optional<int64_t> parse_checkpoint_dir_name(const std::string& name);
std::string checkpoint_dir_name(int64_t step);

struct Verification {
  bool ok = false;
  std::string reason;                // empty when ok; else what failed, naming the file
  std::optional<Manifest> manifest;  // set whenever the manifest parsed
  uint64_t bytes = 0;                // bytes of the listed files found on disk
};

// ok when MANIFEST.json parses, its step equals N for a directory named checkpoint-N, and every
// listed file exists as a regular file with the listed size and checksum. Files the manifest does not
// list are ignored: they cannot change what a reader loads. Never throws for a defect of the directory.
Verification verify_checkpoint(const std::filesystem::path& dir);

}  // namespace dreamlora::checkpoint
