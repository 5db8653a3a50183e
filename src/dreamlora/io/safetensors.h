// safetensors reader (mmap, zero-copy where the dtype is native) and durable writer.
// Format: u64 LE header length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {..}},
// then one contiguous data buffer. Every field of a hostile file is validated before any byte is read.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dreamlora::io::safetensors {

struct TensorInfo {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data buffer
  uint64_t end = 0;
};

// Largest header accepted (the reference implementation's own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

class File {
 public:
  // Maps the file and validates its header; throws dreamlora::Error naming the path on any defect.
  static File open(const std::filesystem::path& path);
  // Parses an in-memory buffer (kept alive by the caller); used by the fuzzer and tests.
  static File parse(const uint8_t* data, size_t size, const std::string& label);

  const std::filesystem::path& path() const { return path_; }
  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;  // in data-offset order
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A CPU tensor viewing the mapped bytes (it keeps the mapping alive). Read-only by contract.
  torch::Tensor get(const std::string& name) const;
  // All tensors, by name.
  std::map<std::string, torch::Tensor> load_all() const;
  uint64_t data_bytes() const;
  // Drops the mapped pages read so far from this process's memory (they are re-read from the file if
  // touched again): a large file read part by part then does not keep every part resident.
  void release_pages() const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data buffer
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// When t views the pages of a File's mapping (get(), or a view of it), drops the pages it spans from this
// process's memory once the caller has copied it (re-read from the file if touched again); a no-op for any
// other tensor. Loading copies one tensor at a time, so the mapped file never becomes resident as a whole.
void release_mapped_pages(const torch::Tensor& t);

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Serialises tensors (any device, made contiguous CPU) exactly as the reference writer lays them out
// (sorted by dtype then name), so equal inputs give byte-identical files.
std::string serialize(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});
// Serialises then writes durably: temp file in the same dir, fsync, rename, fsync the dir.
void save(const std::filesystem::path& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata = {});
// Same, from a name-sorted map.
void save(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

std::string dtype_name(torch::ScalarType type);
torch::ScalarType scalar_type(const std::string& dtype_name);  // throws on unknown names

}  // namespace dreamlora::io::safetensors
