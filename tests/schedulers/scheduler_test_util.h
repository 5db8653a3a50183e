// Helpers for the scheduler tests: fixture access and a relative-error check that prints the error.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>
#include <string>

#include "dreamlora/io/safetensors.h"
#include "test_util.h"

namespace dreamlora::testing {

// max|a - b| / max|b| (b all zero: the absolute error).
inline double max_rel_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  const double scale = e.abs().max().item<double>();
  const double err = (a - e).abs().max().item<double>();
  return scale > 0 ? err / scale : err;
}

inline void expect_rel_near(const std::string& what, const torch::Tensor& actual,
                            const torch::Tensor& expected, double rel) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double err = max_rel_error(actual, expected);
  std::cout << "[ parity ] " << what << " max rel error " << err << std::endl;
  EXPECT_LE(err, rel) << what;
}

inline io::safetensors::File open_reference(const std::string& pipeline) {
  return io::safetensors::File::open(fixtures_dir() / pipeline / "reference.safetensors");
}

inline std::filesystem::path scheduler_config_path(const std::string& pipeline) {
  return fixtures_dir() / pipeline / "scheduler" / "scheduler_config.json";
}

}  // namespace dreamlora::testing
