// ConfigReader refuses a float that an integer key cannot hold (nlohmann would cast it: undefined
// behaviour). Found by fuzz/model_config_fuzz.cpp; its input is replayed here.
#include <gtest/gtest.h>

#include <filesystem>

#include "dreamlora/common/error.h"
#include "dreamlora/io/json.h"

namespace dreamlora::io {
namespace {

std::string config_error(const ConfigReader& r, const std::string& key, bool list) {
  try {
    if (list)
      r.get<std::vector<int64_t>>(key, {});
    else
      r.get<int64_t>(key, 0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigReaderIntegers, AFloatOutOfTheIntegerRangeIsAnErrorNamingTheFileAndKey) {
  const auto path = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "regressions" /
                    "model_config_fuzz" / "vae-block-out-channels-float-6e99.json";
  const auto r = ConfigReader::from_file(path);
  const std::string m = config_error(r, "block_out_channels", true);
  EXPECT_NE(m.find(path.string() + ": key 'block_out_channels' has value"), std::string::npos) << m;
  EXPECT_NE(m.find("out of the range of an integer"), std::string::npos) << m;

  const ConfigReader scalar(Json::parse(R"({"sample_size": 1e30, "norm_num_groups": 32.0})"), "config.json");
  EXPECT_NE(config_error(scalar, "sample_size", false).find("config.json: key 'sample_size'"),
            std::string::npos);
  EXPECT_EQ(scalar.get<int64_t>("norm_num_groups", 0), 32);  // a whole float in range reads as before
}

}  // namespace
}  // namespace dreamlora::io
