// Image files: PNG text chunks round trip, EXIF orientations, errors that name the file.
#include "dreamlora/io/image.h"

#include <fstream>

#include "dreamlora/common/error.h"
#include "test_util.h"

using namespace dreamlora;
using namespace dreamlora::io;

namespace {
Image gradient(int w, int h) {
  Image img;
  img.width = w;
  img.height = h;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) img.rgb.insert(img.rgb.end(), {uint8_t(x * 10), uint8_t(y * 10), uint8_t(7)});
  return img;
}
const uint8_t* pixel(const Image& img, int x, int y) {
  return &img.rgb[(static_cast<size_t>(y) * img.width + x) * 3];
}
}  // namespace

TEST(Image, PngRoundTripsPixelsAndTextChunks) {
  auto dir = dreamlora::testing::make_temp_dir("img");
  auto img = gradient(5, 3);
  save_png(dir / "a.png", img, {{"prompt", "a photo of sks dog"}, {"seed", "42"}});
  auto back = load_image(dir / "a.png");
  EXPECT_EQ(back.width, 5);
  EXPECT_EQ(back.height, 3);
  EXPECT_EQ(back.rgb, img.rgb);
  auto text = read_png_text(dir / "a.png");
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[0].first, "prompt");
  EXPECT_EQ(text[0].second, "a photo of sks dog");
  EXPECT_EQ(text[1].second, "42");
}

TEST(Image, ExifOrientationsMapPixelsLikeTheSpec) {
  auto img = gradient(4, 2);            // pixel (x, y) holds (10x, 10y)
  auto r6 = apply_orientation(img, 6);  // rotate 90 degrees clockwise to display
  EXPECT_EQ(r6.width, 2);
  EXPECT_EQ(r6.height, 4);
  // top-left of the displayed image is the source's bottom-left
  EXPECT_EQ(pixel(r6, 0, 0)[0], 0);
  EXPECT_EQ(pixel(r6, 0, 0)[1], 10);
  auto r3 = apply_orientation(img, 3);  // 180 degrees
  EXPECT_EQ(pixel(r3, 0, 0)[0], 30);
  EXPECT_EQ(pixel(r3, 0, 0)[1], 10);
  auto r2 = apply_orientation(img, 2);  // mirrored
  EXPECT_EQ(pixel(r2, 0, 0)[0], 30);
  EXPECT_EQ(pixel(r2, 0, 0)[1], 0);
  EXPECT_EQ(apply_orientation(img, 1).rgb, img.rgb);
}

TEST(Image, UnreadableAndEmptyFilesAreNamed) {
  auto dir = dreamlora::testing::make_temp_dir("img-bad");
  {
    std::ofstream(dir / "broken.jpg") << "not a jpeg at all";
  }
  {
    std::ofstream(dir / "empty.png");
  }
  for (const char* name : {"broken.jpg", "empty.png", "missing.png"}) {
    try {
      load_image(dir / name);
      FAIL() << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}
