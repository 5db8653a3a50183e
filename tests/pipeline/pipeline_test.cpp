// The embedded default model and sampling: make-tiny-model output re-loads; a seed gives the same image
// bytes twice and another seed different ones; bad arguments are refused with the flag named.
#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/model_dir.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/pipeline/text_to_image.h"
#include "dreamlora/synth/tiny_model.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::pipeline;
namespace fs = std::filesystem;

namespace {
ModelBundle& tiny(bool sdxl) {
  static std::map<bool, ModelBundle> bundles;
  auto it = bundles.find(sdxl);
  if (it != bundles.end()) return it->second;
  auto dir = dreamlora::testing::make_temp_dir(sdxl ? "tiny-xl" : "tiny-sd");
  synth::TinyModelOptions o;
  o.sdxl = sdxl;
  synth::write_tiny_model(dir, o);
  return bundles.emplace(sdxl, ModelBundle::load(dir, {})).first->second;
}
std::string png_bytes(const io::Image& img) {
  return io::encode_png(img);
}
}  // namespace

TEST(TinyModel, WritesAPipelineThatReloads) {
  auto& sd = tiny(false);
  EXPECT_FALSE(sd.sdxl);
  EXPECT_EQ(io::ModelDir::open(sd.root).component("unet").class_name, "UNet2DConditionModel");
  auto& xl = tiny(true);
  EXPECT_TRUE(xl.sdxl);
  EXPECT_FALSE(xl.text.text_encoder_2.is_empty());
}

TEST(TextToImage, SameSeedSameBytesOtherSeedOtherImage) {
  auto& model = tiny(false);
  SampleOptions o;
  o.prompt = "a photo of sks toy";
  o.steps = 3;
  o.width = o.height = 32;
  o.seed = 1;
  auto a = text_to_image(model, o), b = text_to_image(model, o);
  o.seed = 2;
  auto c = text_to_image(model, o);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].width, 32);
  EXPECT_EQ(png_bytes(a[0]), png_bytes(b[0]));
  EXPECT_NE(png_bytes(a[0]), png_bytes(c[0]));
}

TEST(TextToImage, SdxlSamplesWithMicroConditioning) {
  auto& model = tiny(true);
  SampleOptions o;
  o.prompt = "a photo of sks toy";
  o.steps = 2;
  o.num_images = 2;
  o.width = o.height = 32;
  o.sampler = "dpmpp-2m";
  auto images = text_to_image(model, o);
  ASSERT_EQ(images.size(), 2u);
  EXPECT_NE(png_bytes(images[0]), png_bytes(images[1]));
}

TEST(TextToImage, BadArgumentsNameTheFlag) {
  auto& model = tiny(false);
  SampleOptions o;
  o.prompt = "x";
  o.width = 30;
  auto message = [&] {
    try {
      check_sample_options(model, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message().find("--width/--height"), std::string::npos);
  o.width = 32;
  o.sampler = "heun-ish";
  EXPECT_NE(message().find("--sampler"), std::string::npos);
  o.sampler = "euler";
  o.steps = 0;
  EXPECT_NE(message().find("--steps"), std::string::npos);
}
