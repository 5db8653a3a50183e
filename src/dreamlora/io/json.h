// JSON helpers around nlohmann::json: reading files with errors that name the file, and typed
// config look-ups with Python's defaults.
#pragma once

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dreamlora/common/error.h"

namespace dreamlora::io {

using Json = nlohmann::json;

Json read_json(const std::filesystem::path& path);

namespace json_detail {
template <typename T>
struct IntegerElement {
  using type = T;
};
template <typename T>
struct IntegerElement<std::vector<T>> {
  using type = T;
};
// nlohmann converts a float to an integer type with a plain cast: undefined behaviour when the value is out
// of the type's range (found by fuzz/model_config_fuzz.cpp: 6.4e99 in block_out_channels).
template <typename I>
bool floats_fit(const Json& j) {
  if (j.is_array()) {
    for (const auto& e : j)
      if (!floats_fit<I>(e)) return false;
    return true;
  }
  if (!j.is_number_float()) return true;
  const double v = j.get<double>();
  return v >= static_cast<double>(std::numeric_limits<I>::min()) &&
         v < static_cast<double>(std::numeric_limits<I>::max());
}
}  // namespace json_detail

// Typed view of one config.json: get<T>(key, default) treats a missing key or null as the default,
// and a value of the wrong type as an error naming the file and the key.
class ConfigReader {
 public:
  ConfigReader(Json json, std::string source) : json_(std::move(json)), source_(std::move(source)) {}
  static ConfigReader from_file(const std::filesystem::path& path);

  bool has(const std::string& key) const { return json_.contains(key) && !json_[key].is_null(); }
  const Json& raw() const { return json_; }
  const std::string& source() const { return source_; }

  template <typename T>
  T get(const std::string& key, const T& fallback) const {
    if (!has(key)) return fallback;
    using Element = typename json_detail::IntegerElement<T>::type;
    if constexpr (std::is_integral<Element>::value && !std::is_same<Element, bool>::value)
      DL_CHECK(json_detail::floats_fit<Element>(json_.at(key)), source_, ": key '", key, "' has value ",
               json_.at(key).dump(), ", a number out of the range of an integer");
    try {
      return json_.at(key).get<T>();
    } catch (const std::exception& e) {
      fail(str(source_, ": key '", key, "' has value ", json_.at(key).dump(), " of the wrong type (",
               e.what(), ")"));
    }
  }
  template <typename T>
  std::optional<T> get_optional(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get<T>(key, T{});
  }
  // An int or a list of ints, broadcast to n entries (diffusers' per-block convention).
  std::vector<int64_t> get_per_block(const std::string& key, int64_t fallback, size_t n) const;
  // Error unless key is absent, null, or equal to the supported value.
  void require_value(const std::string& key, const Json& supported) const;

 private:
  Json json_;
  std::string source_;
};

}  // namespace dreamlora::io
