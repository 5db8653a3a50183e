#include "dreamlora/train/latent_disk_cache.h"

#include <signal.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <cerrno>
#include <regex>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/train/trainer_state.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

namespace {

// The VAE by content: "config.json=<xxh3>;<weights file>=<sampled xxh3>;...", or the single file's
// sampled hash and the config folder's VAE config.
std::string vae_identity(const TrainConfig& config) {
  const fs::path root(config.model);
  std::string id;
  auto add_config = [&](const fs::path& file) {
    if (fs::exists(file)) id += "config.json=" + checkpoint::xxh3_hex(io::read_file(file)) + ";";
  };
  if (fs::is_directory(root)) {
    add_config(root / "vae" / "config.json");
    for (const auto& file : io::find_weight_files(root / "vae", config.variant))
      id += file.filename().string() + "=" + weights_sample_hash(file) + ";";
  } else {
    if (!config.model_config.empty()) add_config(fs::path(config.model_config) / "vae" / "config.json");
    id += root.filename().string() + "=" + weights_sample_hash(root) + ";";
  }
  return id;
}

std::string bytes_hash(const torch::Tensor& t) {
  return checkpoint::xxh3_hex(std::string_view(static_cast<const char*>(t.data_ptr()), t.nbytes()));
}

std::string tensors_hash(const torch::Tensor& mean, const torch::Tensor& std) {
  return bytes_hash(mean) + "," + bytes_hash(std);
}

std::string yes_no(bool value) {
  return value ? "true" : "false";
}

// The first field in which a file's metadata differs from what this run expects; "" when none does.
std::string metadata_difference(const std::map<std::string, std::string>& saved,
                                const std::map<std::string, std::string>& expected) {
  for (const auto& [key, value] : expected) {
    auto it = saved.find(key);
    if (it == saved.end()) return key + ": not recorded in the cache file";
    if (it->second != value) return str(key, ": cache ", it->second, ", now ", value);
  }
  for (const auto& [key, value] : saved)
    if (key != "tensors_xxh3" && !expected.count(key)) return key + ": unexpected in the cache file";
  return "";
}

}  // namespace

std::map<std::string, std::string> latent_cache_context(const TrainConfig& config,
                                                        const pipeline::ModelBundle& model) {
  const auto weight = model.vae->parameters().front();
  std::map<std::string, std::string> c;
  c["vae"] = vae_identity(config);
  c["vae_dtype"] = io::safetensors::dtype_name(weight.scalar_type());
  c["vae_device"] = weight.device().is_cuda() ? "cuda" : "cpu";
  // On a GPU these choose other kernels (other rounding); the CPU ignores them.
  c["compute"] = weight.device().is_cuda() ? str("deterministic=", yes_no(config.deterministic),
                                                 ",allow_tf32=", yes_no(config.allow_tf32))
                                           : "cpu";
  c["torch"] = str(TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR, ".", TORCH_VERSION_PATCH);
  return c;
}

LatentDiskCache::LatentDiskCache(fs::path dir, std::map<std::string, std::string> context, std::string set,
                                 bool write)
    : dir_(std::move(dir)), context_(std::move(context)), set_(std::move(set)), write_(write) {}

fs::path LatentDiskCache::path_of(const LatentEntry& entry) const {
  const std::string key = str(set_, "\n", fs::absolute(entry.image).lexically_normal().string(), "\n",
                              entry.flip ? "flip" : "noflip");
  return dir_ / (checkpoint::xxh3_hex(key) + ".safetensors");
}

std::map<std::string, std::string> LatentDiskCache::expected_metadata(const LatentEntry& entry) {
  auto content = content_.find(entry.image);
  if (content == content_.end())
    content = content_.emplace(entry.image, checkpoint::xxh3_file_hex(entry.image)).first;
  std::map<std::string, std::string> m = context_;
  m["format"] = "dreamlora latent cache";
  m["format_version"] = std::to_string(kLatentCacheFormatVersion);
  m["set"] = set_;
  m["image"] = fs::absolute(entry.image).lexically_normal().string();
  m["image_xxh3"] = content->second;
  m["resolution"] = std::to_string(entry.resolution);
  m["center_crop"] = yes_no(entry.center_crop);
  m["target_width"] = std::to_string(entry.target_width);
  m["target_height"] = std::to_string(entry.target_height);
  m["bucket"] = std::to_string(entry.bucket);
  m["crop_top"] = std::to_string(entry.crop_top);
  m["crop_left"] = std::to_string(entry.crop_left);
  m["flip"] = yes_no(entry.flip);
  return m;
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> LatentDiskCache::find(const LatentEntry& entry) {
  const fs::path path = path_of(entry);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return std::nullopt;
  std::optional<std::pair<torch::Tensor, torch::Tensor>> found;
  try {
    found = load(path, entry);
  } catch (const std::exception& e) {  // any defect of the file: encode again, never stop the run
    problems_.push_back(str("not reused: ", path.filename().string(), " (", entry.image.filename().string(),
                            "): unreadable: ", e.what()));
  }
  if (found) {
    ++counts_.reused;
  } else {
    refused_.insert(path);
  }
  return found;
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> LatentDiskCache::load(const fs::path& path,
                                                                             const LatentEntry& entry) {
  const auto file = io::safetensors::File::open(path);
  const std::string difference = metadata_difference(file.metadata(), expected_metadata(entry));
  if (!difference.empty()) {
    problems_.push_back(str("not reused: ", path.filename().string(), " (", entry.image.filename().string(),
                            "): ", difference));
    return std::nullopt;
  }
  DL_CHECK(file.contains("mean") && file.contains("std"), path.string(), ": no 'mean' and 'std' tensors");
  // Copies: the views keep the mapping alive, and a later rewrite of the file must not change them.
  auto mean = file.get("mean").clone(), std = file.get("std").clone();
  DL_CHECK(mean.dim() == 3 && mean.sizes() == std.sizes(), path.string(), ": mean ", mean.sizes(),
           " and std ", std.sizes(), " are not two [C, h, w] tensors of one shape");
  const auto recorded = file.metadata().find("tensors_xxh3");
  DL_CHECK(recorded != file.metadata().end() && recorded->second == tensors_hash(mean, std), path.string(),
           ": the tensors do not match their recorded checksum");
  return std::make_pair(mean, std);
}

void LatentDiskCache::store(const LatentEntry& entry, const torch::Tensor& mean, const torch::Tensor& std) {
  const fs::path path = path_of(entry);
  if (!write_) {
    ++counts_.unwritten;
    return;
  }
  try {
    const auto cpu_mean = mean.cpu().contiguous(), cpu_std = std.cpu().contiguous();
    auto metadata = expected_metadata(entry);
    metadata["tensors_xxh3"] = tensors_hash(cpu_mean, cpu_std);
    io::safetensors::save(path, io::safetensors::NamedTensors{{"mean", cpu_mean}, {"std", cpu_std}},
                          metadata);
  } catch (const std::exception& e) {  // the cache only saves time: the run goes on without this entry
    problems_.push_back(str("not written: ", path.filename().string(), " (", entry.image.filename().string(),
                            "): ", e.what()));
    ++counts_.unwritten;
    return;
  }
  if (refused_.count(path)) {
    ++counts_.rewritten;
  } else {
    ++counts_.encoded;
  }
}

void remove_stale_latent_cache_temps(const fs::path& dir) {
  static const std::regex temp(R"(^\..+\.tmp-([0-9]{1,9})$)");
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::smatch m;
    const std::string name = it->path().filename().string();
    if (!std::regex_match(name, m, temp)) continue;
    const long pid = std::stol(m[1].str());
    if (pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;
    std::error_code rm;
    fs::remove(it->path(), rm);
  }
}

}  // namespace dreamlora::train
