#include "dreamlora/train/trainer_state.h"

#include <algorithm>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora {

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

Json TrainerState::to_json() const {
  return {{"global_step", global_step},
          {"instance_samples", instance_samples},
          {"class_samples", class_samples},
          {"epoch", epoch},
          {"world_size", world_size},
          {"default_rng_state", default_rng_state},
          {"lr_multiplier", lr_multiplier},
          {"fingerprint", fingerprint},
          {"dreamlora_version", checkpoint::dreamlora_version()},
          {"created_at", checkpoint::utc_timestamp_now()}};
}

TrainerState TrainerState::from_json(const Json& j, const std::string& what) {
  TrainerState s;
  try {
    s.global_step = j.at("global_step").get<int64_t>();
    s.instance_samples = j.at("instance_samples").get<int64_t>();
    s.class_samples = j.at("class_samples").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.world_size = j.value("world_size", int64_t{1});
    s.default_rng_state = j.at("default_rng_state").get<std::string>();
    s.lr_multiplier = j.value("lr_multiplier", 1.0);
    s.fingerprint = j.at("fingerprint");
  } catch (const std::exception& e) {
    fail(str(what, ": trainer_state.json is incomplete: ", e.what()));
  }
  return s;
}

Json make_fingerprint(const TrainConfig& config, const std::vector<fs::path>& data_files, int world_size) {
  Json fp = result_settings(config);
  fp.erase("batch-size");
  fp["global-batch-size"] = config.batch_size * world_size;
  // The model by content, not path: a resume on a fresh machine may mount it elsewhere.
  Json model = Json::object();
  for (const char* rel : {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                          "text_encoder_2/config.json", "scheduler/scheduler_config.json"}) {
    auto p = fs::path(config.model) / rel;
    if (fs::exists(p)) model[rel] = checkpoint::xxh3_hex(read_file(p));
  }
  fp["model"] = model;
  Json data = Json::object();
  for (const auto& f : data_files) data[f.filename().string()] = checkpoint::xxh3_file_hex(f);
  fp["data"] = data;
  return fp;
}

std::vector<std::string> fingerprint_differences(const Json& saved, const Json& current) {
  std::vector<std::string> diffs;
  for (auto it = current.begin(); it != current.end(); ++it) {
    if (!saved.contains(it.key())) {
      diffs.push_back(str(it.key(), ": not in the checkpoint, now ", it.value().dump()));
    } else if (saved[it.key()] != it.value()) {
      if (it.value().is_object() && saved[it.key()].is_object()) {
        for (const auto& d : fingerprint_differences(saved[it.key()], it.value())) diffs.push_back(it.key() + "." + d);
        for (auto s = saved[it.key()].begin(); s != saved[it.key()].end(); ++s)
          if (!it.value().contains(s.key())) diffs.push_back(str(it.key(), ".", s.key(), ": in the checkpoint, now absent"));
      } else {
        diffs.push_back(str(it.key(), ": checkpoint ", saved[it.key()].dump(), ", now ", it.value().dump()));
      }
    }
  }
  for (auto it = saved.begin(); it != saved.end(); ++it)
    if (!current.contains(it.key())) diffs.push_back(str(it.key(), ": in the checkpoint, now absent"));
  return diffs;
}

}  // namespace dreamlora
