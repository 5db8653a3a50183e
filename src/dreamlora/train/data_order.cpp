#include "dreamlora/train/data_order.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

DataOrder::DataOrder(uint64_t seed, int64_t num_items) : seed_(seed), num_items_(num_items) {
  DL_CHECK(num_items > 0, "DataOrder: no items to visit");
}

const std::vector<int64_t>& DataOrder::permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    // One generator per epoch, seeded from (seed, epoch): the permutation of epoch e never depends on
    // how many random numbers anything else drew.
    auto gen = at::detail::createCPUGenerator(seed_ * 1000003ull + static_cast<uint64_t>(epoch) + 1);
    auto perm = torch::randperm(num_items_, gen, torch::kInt64);
    cached_.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + num_items_);
    cached_epoch_ = epoch;
  }
  return cached_;
}

int64_t DataOrder::item(int64_t n) { return permutation(n / num_items_)[n % num_items_]; }

}  // namespace dreamlora::train
