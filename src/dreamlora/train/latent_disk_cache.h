// --cache-latents-to-disk: the latent distribution (mean, std) of each (image, flip) of a set as one
// safetensors file under <output-dir>/latent-cache/, with what it was computed from in its metadata. An
// entry is reused only when every field matches this run and its tensors match their checksum; anything
// else (absent, unreadable, different) is encoded again and rewritten, so deleting the folder is always safe.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/train_config.h"

namespace dreamlora::train {

// The cache folder's name inside --output-dir (not checkpoint-<N>: the checkpoint store ignores it).
constexpr const char* kLatentCacheDirName = "latent-cache";
// Bumped whenever the file layout or the way latents are computed changes: older entries are rewritten.
constexpr int kLatentCacheFormatVersion = 1;

// What every entry's latents depend on besides the entry itself: the VAE by content (its config and
// sampled weights, hashed as the resume fingerprint hashes them), the dtype and device kind it runs in,
// the CUDA compute settings and the libtorch version.
std::map<std::string, std::string> latent_cache_context(const TrainConfig& config,
                                                        const pipeline::ModelBundle& model);

struct LatentCacheCounts {
  int64_t reused = 0;     // found, matching: loaded instead of encoded
  int64_t encoded = 0;    // absent: encoded and written
  int64_t rewritten = 0;  // found but unreadable or made from something else: encoded and written again
  int64_t unwritten = 0;  // encoded but not written (a write error, or a worker other than the main one)
};

class LatentDiskCache : public LatentStore {
 public:
  // set: "instance" or "class" (an image may be in both, at different sizes). write: false on workers
  // other than the main one, which read entries but leave the writing to it.
  LatentDiskCache(std::filesystem::path dir, std::map<std::string, std::string> context, std::string set,
                  bool write);
  std::optional<std::pair<torch::Tensor, torch::Tensor>> find(const LatentEntry& entry) override;
  void store(const LatentEntry& entry, const torch::Tensor& mean, const torch::Tensor& std) override;

  const LatentCacheCounts& counts() const { return counts_; }
  // Why each entry found on disk was not reused ("not reused: <file> (<image>): image_xxh3: cache ...,
  // now ..."), and each write that failed ("not written: ...").
  const std::vector<std::string>& problems() const { return problems_; }
  // The file of an entry: named by a hash of the set, the image path and the flip, so that an entry made
  // from anything else (another image content, size, VAE) is found, refused and overwritten in place.
  std::filesystem::path path_of(const LatentEntry& entry) const;
  // The metadata an entry must carry to be reused (without the tensors' checksum).
  std::map<std::string, std::string> expected_metadata(const LatentEntry& entry);

 private:
  std::optional<std::pair<torch::Tensor, torch::Tensor>> load(const std::filesystem::path& path,
                                                              const LatentEntry& entry);
  std::filesystem::path dir_;
  std::map<std::string, std::string> context_;
  std::string set_;
  bool write_ = true;
  LatentCacheCounts counts_;
  std::vector<std::string> problems_;
  std::set<std::filesystem::path> refused_;  // files found but not reused: their store() is a rewrite
  std::map<std::filesystem::path, std::string> content_;  // XXH3 of each image's bytes, read once
};

// Removes the temp files of cache writes whose process is gone (a run killed mid-write).
void remove_stale_latent_cache_temps(const std::filesystem::path& dir);

}  // namespace dreamlora::train
