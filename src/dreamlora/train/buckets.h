// Aspect-ratio bucketing with kohya's semantics (sd-scripts' make_bucket_resolutions and
// BucketManager.select_bucket): buckets of about resolution^2 pixels whose sides are multiples of the
// step, each image to the bucket of nearest aspect ratio, resized to cover it, then cropped to it.
#pragma once

#include <cstdint>
#include <vector>

namespace dreamlora::train {

struct BucketOptions {
  bool enabled = false;
  int64_t resolution = 512;  // buckets hold at most resolution^2 pixels
  int64_t min_reso = 256;
  int64_t max_reso = 1024;
  int64_t step = 64;
};

struct BucketSize {
  int64_t width = 0, height = 0;
  bool operator==(const BucketSize& o) const { return width == o.width && height == o.height; }
  bool operator<(const BucketSize& o) const { return width != o.width ? width < o.width : height < o.height; }
};

// kohya's bucket list, sorted by (width, height): the square of side floor(resolution / step) * step,
// and for each width from min_reso to max_reso in steps, the height min(max_reso, floor(area / width /
// step) * step) when at least min_reso, in both orientations.
std::vector<BucketSize> make_bucket_resolutions(const BucketOptions& options);

struct BucketChoice {
  int64_t bucket = 0;                             // index into the bucket list
  int64_t resized_width = 0, resized_height = 0;  // the image resized to cover the bucket
};

// The bucket whose aspect ratio (width / height) is nearest the image's (the first of equals), and the
// size that covers it: scale by bucket height / image height when the image is wider than the bucket,
// else by bucket width / image width, rounding half up.
BucketChoice select_bucket(const std::vector<BucketSize>& buckets, int64_t image_width, int64_t image_height);

}  // namespace dreamlora::train
