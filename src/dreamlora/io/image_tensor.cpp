#include "dreamlora/io/image_tensor.h"

#include <torch/torch.h>

namespace dreamlora::io {

torch::Tensor image_to_tensor(const Image& image) {
  auto hwc =
      torch::from_blob(const_cast<uint8_t*>(image.rgb.data()), {image.height, image.width, 3}, torch::kUInt8);
  return hwc.permute({2, 0, 1}).to(torch::kFloat32).div_(255.0).contiguous();
}

Image tensor_to_image(const torch::Tensor& chw) {
  auto hwc = (chw.detach().to(torch::kCPU, torch::kFloat32).clamp(0, 1) * 255.0)
                 .round()
                 .to(torch::kUInt8)
                 .permute({1, 2, 0})
                 .contiguous();
  Image img;
  img.height = static_cast<int>(hwc.size(0));
  img.width = static_cast<int>(hwc.size(1));
  img.rgb.assign(hwc.data_ptr<uint8_t>(), hwc.data_ptr<uint8_t>() + hwc.numel());
  return img;
}

std::vector<Image> tensor_to_images(const torch::Tensor& batch) {
  std::vector<Image> out;
  for (int64_t i = 0; i < batch.size(0); ++i) out.push_back(tensor_to_image(batch[i]));
  return out;
}

}  // namespace dreamlora::io
