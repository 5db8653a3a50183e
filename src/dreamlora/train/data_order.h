// The order in which training examples are visited: a fresh seeded permutation per epoch, addressed by
// the count of samples consumed. Stateless apart from that count, so a checkpoint stores one integer and
// a run can resume (on any number of workers) with exactly the same order.
#pragma once

#include <cstdint>
#include <vector>

namespace dreamlora::train {

class DataOrder {
 public:
  DataOrder(uint64_t seed, int64_t num_items);
  // Index of the item visited as the n-th sample overall (n = 0, 1, ...).
  int64_t item(int64_t n);
  int64_t epoch_of(int64_t n) const { return n / num_items_; }
  int64_t num_items() const { return num_items_; }

 private:
  const std::vector<int64_t>& permutation(int64_t epoch);
  uint64_t seed_;
  int64_t num_items_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_;
};

}  // namespace dreamlora::train
