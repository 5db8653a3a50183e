// Images <-> tensors: 8-bit RGB to [3, H, W] floats in [0, 1] and back (rounded, clamped).
#pragma once

#include <torch/types.h>

#include <vector>

#include "dreamlora/io/image.h"

namespace dreamlora::io {

// [3, H, W] float in [0, 1]
torch::Tensor image_to_tensor(const Image& image);
// [3, H, W] in [0, 1] -> 8-bit RGB
Image tensor_to_image(const torch::Tensor& chw);
// [B, 3, H, W] in [0, 1] -> B images
std::vector<Image> tensor_to_images(const torch::Tensor& batch);

}  // namespace dreamlora::io
