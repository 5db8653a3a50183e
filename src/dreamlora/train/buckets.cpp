#include "dreamlora/train/buckets.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "dreamlora/common/error.h"

namespace dreamlora::train {

std::vector<BucketSize> make_bucket_resolutions(const BucketOptions& o) {
  DL_CHECK(o.step >= 8 && o.step % 8 == 0, "--bucket-reso-steps must be a positive multiple of 8, got ",
           o.step);
  DL_CHECK(o.min_reso >= o.step && o.min_reso <= o.max_reso, "--min-bucket-reso (", o.min_reso,
           ") must be at least --bucket-reso-steps (", o.step, ") and at most --max-bucket-reso (",
           o.max_reso, ")");
  DL_CHECK(o.resolution <= o.max_reso, "--resolution ", o.resolution, " is larger than --max-bucket-reso ",
           o.max_reso);
  const int64_t area = o.resolution * o.resolution;
  std::set<BucketSize> sizes;
  const int64_t square = static_cast<int64_t>(std::sqrt(static_cast<double>(area))) / o.step * o.step;
  sizes.insert({square, square});
  for (int64_t width = o.min_reso; width <= o.max_reso; width += o.step) {
    const int64_t height = std::min(o.max_reso, area / width / o.step * o.step);
    if (height >= o.min_reso) {
      sizes.insert({width, height});
      sizes.insert({height, width});
    }
  }
  return {sizes.begin(), sizes.end()};
}

BucketChoice select_bucket(const std::vector<BucketSize>& buckets, int64_t image_width,
                           int64_t image_height) {
  DL_CHECK(!buckets.empty() && image_width > 0 && image_height > 0,
           "select_bucket: no buckets or an empty image");
  const double aspect = static_cast<double>(image_width) / static_cast<double>(image_height);
  BucketChoice c;
  double best = INFINITY;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const double error = std::abs(static_cast<double>(buckets[i].width) / buckets[i].height - aspect);
    if (error < best) {
      best = error;
      c.bucket = static_cast<int64_t>(i);
    }
  }
  const auto& b = buckets[c.bucket];
  const double bucket_aspect = static_cast<double>(b.width) / static_cast<double>(b.height);
  const double scale = aspect > bucket_aspect ? static_cast<double>(b.height) / image_height
                                              : static_cast<double>(b.width) / image_width;
  // int(x * scale + 0.5), and never below the bucket (the rounding could lose a pixel otherwise).
  c.resized_width = std::max(b.width, static_cast<int64_t>(image_width * scale + 0.5));
  c.resized_height = std::max(b.height, static_cast<int64_t>(image_height * scale + 0.5));
  return c;
}

}  // namespace dreamlora::train
