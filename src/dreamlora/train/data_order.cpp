#include "dreamlora/train/data_order.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <map>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

DataOrder::DataOrder(uint64_t seed, int64_t num_items)
    : seed_(seed), num_items_(num_items), epoch_length_(num_items) {
  DL_CHECK(num_items > 0, "DataOrder: no items to visit");
}

DataOrder::DataOrder(uint64_t seed, std::vector<int64_t> bucket_of_item, int64_t batch_size)
    : seed_(seed),
      num_items_(static_cast<int64_t>(bucket_of_item.size())),
      bucket_of_item_(std::move(bucket_of_item)),
      batch_size_(batch_size) {
  DL_CHECK(num_items_ > 0, "DataOrder: no items to visit");
  DL_CHECK(batch_size_ >= 1, "DataOrder: batch size must be at least 1");
  std::map<int64_t, int64_t> counts;
  for (int64_t b : bucket_of_item_) ++counts[b];
  epoch_length_ = 0;
  for (const auto& [bucket, n] : counts) epoch_length_ += (n + batch_size_ - 1) / batch_size_ * batch_size_;
}

std::vector<int64_t> DataOrder::bucketed_permutation(at::Generator& gen) const {
  std::map<int64_t, std::vector<int64_t>> members;  // bucket -> items, in item order
  for (int64_t i = 0; i < num_items_; ++i) members[bucket_of_item_[i]].push_back(i);
  std::vector<std::vector<int64_t>> batches;
  for (const auto& [bucket, items] : members) {
    const int64_t n = static_cast<int64_t>(items.size());
    auto perm = torch::randperm(n, gen, torch::kInt64);
    const int64_t* order = perm.data_ptr<int64_t>();
    for (int64_t start = 0; start < n; start += batch_size_) {
      std::vector<int64_t> batch;
      for (int64_t j = start; j < start + batch_size_; ++j) batch.push_back(items[order[j % n]]);
      batches.push_back(std::move(batch));
    }
  }
  auto batch_order = torch::randperm(static_cast<int64_t>(batches.size()), gen, torch::kInt64);
  std::vector<int64_t> out;
  for (int64_t k = 0; k < batch_order.numel(); ++k) {
    const auto& batch = batches[batch_order.data_ptr<int64_t>()[k]];
    out.insert(out.end(), batch.begin(), batch.end());
  }
  return out;
}

const std::vector<int64_t>& DataOrder::permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    // One generator per epoch, seeded from (seed, epoch): the permutation of epoch e never depends on
    // how many random numbers anything else drew.
    auto gen = at::detail::createCPUGenerator(seed_ * 1000003ull + static_cast<uint64_t>(epoch) + 1);
    if (!bucket_of_item_.empty()) {
      cached_ = bucketed_permutation(gen);
    } else {
      auto perm = torch::randperm(num_items_, gen, torch::kInt64);
      cached_.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + num_items_);
    }
    cached_epoch_ = epoch;
  }
  return cached_;
}

int64_t DataOrder::item(int64_t n) {
  return permutation(n / epoch_length_)[n % epoch_length_];
}

}  // namespace dreamlora::train
