// The data order is a pure function of (seed, samples consumed): resumable and worker-count independent.
#include "dreamlora/train/data_order.h"

#include <set>

#include "test_util.h"

using dreamlora::train::DataOrder;

TEST(DataOrder, EachEpochVisitsEveryItemOnce) {
  DataOrder order(7, 5);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<int64_t> seen;
    for (int64_t i = 0; i < 5; ++i) seen.insert(order.item(epoch * 5 + i));
    EXPECT_EQ(seen.size(), 5u);
  }
}

TEST(DataOrder, SameSeedSameOrderInAnyAccessPattern) {
  DataOrder a(3, 7), b(3, 7);
  std::vector<int64_t> forward, backward(30);
  for (int64_t n = 0; n < 30; ++n) forward.push_back(a.item(n));
  for (int64_t n = 29; n >= 0; --n) backward[n] = b.item(n);
  EXPECT_EQ(forward, backward);
  DataOrder c(4, 7);
  std::vector<int64_t> other;
  for (int64_t n = 0; n < 30; ++n) other.push_back(c.item(n));
  EXPECT_NE(forward, other);
}
