// The order in which training examples are visited: a fresh seeded permutation per epoch, addressed by
// the count of samples consumed. Stateless apart from that count, so a checkpoint stores one integer and
// a run can resume (on any number of workers) with exactly the same order.
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <vector>

namespace dreamlora::train {

class DataOrder {
 public:
  DataOrder(uint64_t seed, int64_t num_items);
  // Bucketed: every run of batch_size samples (aligned at multiples of batch_size, as every worker's
  // micro-batches are) comes from one bucket. Per epoch, each bucket's items are shuffled and cut into
  // batches (the last one filled up from the bucket's start), and the batches are shuffled. An epoch
  // then has sum over buckets of ceil(n_b / batch_size) * batch_size samples.
  DataOrder(uint64_t seed, std::vector<int64_t> bucket_of_item, int64_t batch_size);
  // Index of the item visited as the n-th sample overall (n = 0, 1, ...).
  int64_t item(int64_t n);
  int64_t epoch_of(int64_t n) const { return n / epoch_length_; }
  int64_t num_items() const { return num_items_; }
  int64_t epoch_length() const { return epoch_length_; }

 private:
  const std::vector<int64_t>& permutation(int64_t epoch);
  std::vector<int64_t> bucketed_permutation(at::Generator& gen) const;
  uint64_t seed_;
  int64_t num_items_, epoch_length_;
  std::vector<int64_t> bucket_of_item_;  // empty: not bucketed
  int64_t batch_size_ = 1;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_;
};

}  // namespace dreamlora::train
