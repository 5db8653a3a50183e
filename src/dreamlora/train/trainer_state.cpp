#include "dreamlora/train/trainer_state.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/io/safetensors.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

namespace {
const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string base64_decode(const std::string& text, const std::string& what) {
  DL_CHECK(text.size() % 4 == 0, what, ": invalid base64 length ", text.size());
  std::string out;
  auto value = [&](char c) -> uint32_t {
    const char* p = std::find(kAlphabet, kAlphabet + 64, c);
    DL_CHECK(p != kAlphabet + 64, what, ": invalid base64 character");
    return static_cast<uint32_t>(p - kAlphabet);
  };
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t v = (value(text[i]) << 18) | (value(text[i + 1]) << 12);
    if (text[i + 2] != '=') v |= value(text[i + 2]) << 6;
    if (text[i + 3] != '=') v |= value(text[i + 3]);
    out.push_back(static_cast<char>((v >> 16) & 0xff));
    if (text[i + 2] != '=') out.push_back(static_cast<char>((v >> 8) & 0xff));
    if (text[i + 3] != '=') out.push_back(static_cast<char>(v & 0xff));
  }
  return out;
}

io::Json TrainerState::to_json() const {
  return {{"global_step", global_step},
          {"instance_samples", instance_samples},
          {"class_samples", class_samples},
          {"epoch", epoch},
          {"world_size", world_size},
          {"default_rng_state", default_rng_state},
          {"cuda_rng_state", cuda_rng_state},
          {"lr_multiplier", lr_multiplier},
          {"fingerprint", fingerprint},
          {"dreamlora_version", checkpoint::dreamlora_version()},
          {"created_at", checkpoint::utc_timestamp_now()}};
}

TrainerState TrainerState::from_json(const io::Json& j, const std::string& what) {
  TrainerState s;
  try {
    s.global_step = j.at("global_step").get<int64_t>();
    s.instance_samples = j.at("instance_samples").get<int64_t>();
    s.class_samples = j.at("class_samples").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.world_size = j.value("world_size", int64_t{1});
    s.default_rng_state = j.at("default_rng_state").get<std::string>();
    s.cuda_rng_state = j.value("cuda_rng_state", std::string());
    s.lr_multiplier = j.value("lr_multiplier", 1.0);
    s.fingerprint = j.at("fingerprint");
  } catch (const std::exception& e) {
    fail(str(what, ": trainer_state.json is incomplete: ", e.what()));
  }
  return s;
}

// The samples are read with pread and POSIX_FADV_RANDOM, not through the mapping: page faults read ahead,
// which on a cold page cache made a 2 GiB file's hash take 3.2 s instead of 0.7 s.
std::string weights_sample_hash(const fs::path& file) {
  auto st = io::safetensors::File::open(file);  // validated header: names, dtypes, shapes, offsets
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  DL_CHECK(fd >= 0, file.string(), ": cannot open: ", std::strerror(errno));
  std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  uint8_t length_bytes[8];
  DL_CHECK(pread(fd, length_bytes, 8, 0) == 8, file.string(), ": cannot read the header length");
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  const uint64_t data_start = 8 + header_length;

  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  DL_CHECK(state && XXH3_64bits_reset(state.get()) == XXH_OK, "XXH3 state allocation failed");
  std::vector<uint8_t> buffer(3 * kWeightSampleBytes);
  auto update_from_file = [&](uint64_t offset, size_t n) {
    DL_CHECK(pread(fd, buffer.data(), n, static_cast<off_t>(data_start + offset)) == static_cast<ssize_t>(n),
             file.string(), ": short read at byte ", data_start + offset);
    XXH3_64bits_update(state.get(), buffer.data(), n);
  };
  for (const auto& name : st.names()) {
    const auto& info = st.info(name);
    std::string header = name + "|" + info.dtype + "|";
    for (auto d : info.shape) header += std::to_string(d) + ",";
    XXH3_64bits_update(state.get(), header.data(), header.size());
    const uint64_t bytes = info.end - info.begin;
    if (bytes == 0) continue;
    if (bytes <= 3 * kWeightSampleBytes) {
      update_from_file(info.begin, bytes);
    } else {
      update_from_file(info.begin, kWeightSampleBytes);
      update_from_file(info.begin + ((bytes / 2) & ~uint64_t{63}), kWeightSampleBytes);
      update_from_file(info.end - kWeightSampleBytes, kWeightSampleBytes);
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(XXH3_64bits_digest(state.get())));
  return hex;
}

bool schedule_depends_on_total_steps(const std::string& scheduler) {
  return scheduler != "constant" && scheduler != "constant_with_warmup";
}

namespace {

// Image bytes and caption of each file, by name; instance and class sets go to keys of their own, so a
// class image named like an instance image cannot hide it.
void add_image_set(io::Json& fp, const std::string& kind, const std::vector<TrainingImage>& images) {
  io::Json data = io::Json::object(), captions = io::Json::object();
  for (const auto& image : images) {
    const std::string name = image.path.filename().string();
    data[name] = checkpoint::xxh3_file_hex(image.path);
    captions[name] = checkpoint::xxh3_hex(image.caption);
  }
  fp[kind + "-data"] = data;
  fp[kind + "-captions"] = captions;
}

}  // namespace

io::Json make_fingerprint(const TrainConfig& config, const std::vector<TrainingImage>& instance_images,
                          const std::vector<TrainingImage>& class_images, int world_size) {
  io::Json fp = result_settings(config);
  fp.erase("batch-size");
  fp["global-batch-size"] = config.batch_size * world_size;
  // Buckets cut the order into batches of the per-worker size: it must stay for an exact resume.
  if (config.enable_bucket) fp["bucket-batch-size"] = config.batch_size;
  if (schedule_depends_on_total_steps(config.scheduler)) fp["num-steps"] = config.num_steps;
  // The model by content, not path: a resume on a fresh machine may mount it elsewhere.
  auto config_hashes = [](const fs::path& root) {
    io::Json hashes = io::Json::object();
    for (const char* rel : {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                            "text_encoder_2/config.json", "scheduler/scheduler_config.json"}) {
      auto p = root / rel;
      if (!root.empty() && fs::exists(p)) hashes[rel] = checkpoint::xxh3_hex(io::read_file(p));
    }
    return hashes;
  };
  fp["model"] = config_hashes(config.model);
  // A single-file checkpoint (its own key, so checkpoints of older builds, which lack it, still resume):
  // its sampled weights and the configs --model-config takes from a folder.
  if (fs::is_regular_file(config.model)) {
    io::Json file = config_hashes(config.model_config);
    file["weights"] = weights_sample_hash(config.model);
    fp["model-file"] = file;
  }
  // The weights by sampled content: another fine-tune of the same architecture has the same configs,
  // keys, shapes and sizes.
  io::Json weights = io::Json::object();
  for (const char* component : {"unet", "vae", "text_encoder", "text_encoder_2"}) {
    const fs::path dir = fs::path(config.model) / component;
    if (!fs::is_directory(dir)) continue;
    for (const auto& file : io::find_weight_files(dir, config.variant))
      weights[std::string(component) + "/" + file.filename().string()] = weights_sample_hash(file);
  }
  fp["model-weights"] = weights;
  add_image_set(fp, "instance", instance_images);
  if (config.prior_preservation) add_image_set(fp, "class", class_images);
  return fp;
}

FingerprintCheck compare_fingerprints(const io::Json& saved, const io::Json& current,
                                      bool allow_schedule_change) {
  FingerprintCheck check;
  io::Json now = current;
  // Fields an older dreamlora did not record cannot be compared: resume, and say so.
  for (auto it = current.begin(); it != current.end(); ++it)
    if (!saved.contains(it.key())) {
      check.notes.push_back(
          str("fingerprint: '", it.key(),
              "' is not recorded in this checkpoint (an older dreamlora wrote it): not checked"));
      now.erase(it.key());
    }
  io::Json old = saved;
  if (old.contains("data") && !now.contains("data")) {
    // Older checkpoints kept instance and class images in one map by file name, class images last.
    io::Json merged = io::Json::object();
    for (const char* key : {"instance-data", "class-data"})
      if (current.contains(key))
        for (auto it = current[key].begin(); it != current[key].end(); ++it) merged[it.key()] = it.value();
    now["data"] = merged;
  }
  if (old.contains("num-steps") && now.contains("num-steps") && old["num-steps"] != now["num-steps"]) {
    const std::string change =
        str("--num-steps: checkpoint ", old["num-steps"].dump(), ", now ", now["num-steps"].dump());
    if (allow_schedule_change) {
      check.notes.push_back(change + " (--allow-schedule-change): the LR schedule follows the new total");
    } else {
      check.differences.push_back(change + " (the " + current.value("scheduler", std::string("LR")) +
                                  " schedule depends on it; --allow-schedule-change accepts the change)");
    }
    old.erase("num-steps");
    now.erase("num-steps");
  }
  for (auto& d : fingerprint_differences(old, now)) check.differences.push_back(std::move(d));
  return check;
}

std::vector<std::string> fingerprint_differences(const io::Json& saved, const io::Json& current) {
  std::vector<std::string> diffs;
  for (auto it = current.begin(); it != current.end(); ++it) {
    if (!saved.contains(it.key())) {
      diffs.push_back(str(it.key(), ": not in the checkpoint, now ", it.value().dump()));
    } else if (saved[it.key()] != it.value()) {
      if (it.value().is_object() && saved[it.key()].is_object()) {
        for (const auto& d : fingerprint_differences(saved[it.key()], it.value()))
          diffs.push_back(it.key() + "." + d);
        for (auto s = saved[it.key()].begin(); s != saved[it.key()].end(); ++s)
          if (!it.value().contains(s.key()))
            diffs.push_back(str(it.key(), ".", s.key(), ": in the checkpoint, now absent"));
      } else {
        diffs.push_back(str(it.key(), ": checkpoint ", saved[it.key()].dump(), ", now ", it.value().dump()));
      }
    }
  }
  for (auto it = saved.begin(); it != saved.end(); ++it)
    if (!current.contains(it.key())) diffs.push_back(str(it.key(), ": in the checkpoint, now absent"));
  return diffs;
}

}  // namespace dreamlora::train
