#include "dreamlora/io/json.h"

#include <fstream>

namespace dreamlora::io {

Json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  DL_CHECK(in.good(), path.string(), ": cannot open (file missing or unreadable)");
  try {
    return Json::parse(in);
  } catch (const std::exception& e) {
    fail(str(path.string(), ": invalid JSON: ", e.what()));
  }
}

ConfigReader ConfigReader::from_file(const std::filesystem::path& path) {
  Json json = read_json(path);
  DL_CHECK(json.is_object(), path.string(), ": expected a JSON object");
  return ConfigReader(std::move(json), path.string());
}

std::vector<int64_t> ConfigReader::get_per_block(const std::string& key, int64_t fallback, size_t n) const {
  if (!has(key)) return std::vector<int64_t>(n, fallback);
  const Json& v = json_.at(key);
  if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
  DL_CHECK(v.is_array(), source_, ": key '", key, "' must be an int or a list of ", n, " ints, got ",
           v.dump());
  DL_CHECK(v.size() == n, source_, ": key '", key, "' has ", v.size(), " entries, expected ", n);
  std::vector<int64_t> out;
  for (const auto& e : v) {
    DL_CHECK(e.is_number_integer(), source_, ": key '", key, "' must hold ints, got ", e.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

void ConfigReader::require_value(const std::string& key, const Json& supported) const {
  if (!has(key)) return;
  DL_CHECK(json_.at(key) == supported, source_, ": unsupported value ", json_.at(key).dump(), " for key '",
           key, "' (dreamlora supports ", supported.dump(), ")");
}

}  // namespace dreamlora::io
