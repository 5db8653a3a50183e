#include "dreamlora/synth/world_detector.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "dreamlora/common/error.h"
#include "dreamlora/synth/world.h"

namespace dreamlora::synth {
namespace {

constexpr int kImageSize = 64;
constexpr int kWorldImages = 500;
constexpr double kMinAccuracy = 0.97;

// A stand-in for a small diffusion model's samples: a 3x3 box blur (twice) plus uniform noise.
io::Image blurred_and_noisy(const io::Image& img, uint64_t seed, int amplitude) {
  io::Image out = img;
  std::mt19937_64 rng(seed);
  for (int pass = 0; pass < 2; ++pass) {
    io::Image src = out;
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x)
        for (int c = 0; c < 3; ++c) {
          int sum = 0, n = 0;
          for (int dy = -1; dy <= 1; ++dy)
            for (int dx = -1; dx <= 1; ++dx) {
              const int nx = std::clamp(x + dx, 0, img.width - 1), ny = std::clamp(y + dy, 0, img.height - 1);
              sum += src.rgb[(ny * img.width + nx) * 3 + c], ++n;
            }
          out.rgb[(y * img.width + x) * 3 + c] = static_cast<uint8_t>(sum / n);
        }
  }
  for (auto& v : out.rgb)
    v = static_cast<uint8_t>(std::clamp(int(v) + int(rng() % (2 * amplitude + 1)) - amplitude, 0, 255));
  return out;
}

struct Accuracy {
  double colour = 0, shape = 0, background = 0, subject = 0;
};

Accuracy world_accuracy(bool degrade) {
  Accuracy a;
  for (int i = 0; i < kWorldImages; ++i) {
    auto s = world_sample(11, i, kImageSize);
    auto d = detect_world_image(degrade ? blurred_and_noisy(s.image, i, 12) : s.image);
    a.colour += d.colour == s.scene.colour;
    a.shape += d.shape == shape_name(s.scene.shape);
    a.background += d.background == s.scene.background;
    a.subject += d.has_subject;
  }
  for (double* v : {&a.colour, &a.shape, &a.background, &a.subject}) *v /= kWorldImages;
  std::cout << "[ detector ] " << (degrade ? "blurred+noisy" : "clean") << ": colour " << a.colour
            << " shape " << a.shape << " background " << a.background << " subject (false positives) "
            << a.subject << "\n";
  return a;
}

TEST(WorldDetector, RecoversColourShapeAndBackgroundOfRenderedImages) {
  auto a = world_accuracy(false);
  EXPECT_GE(a.colour, kMinAccuracy);
  EXPECT_GE(a.shape, kMinAccuracy);
  EXPECT_GE(a.background, kMinAccuracy);
  EXPECT_EQ(a.subject, 0.0);
}

TEST(WorldDetector, StaysAccurateOnBlurredNoisyImages) {
  auto a = world_accuracy(true);
  EXPECT_GE(a.colour, 0.95);
  EXPECT_GE(a.shape, 0.95);
  EXPECT_GE(a.background, 0.95);
  EXPECT_EQ(a.subject, 0.0);
}

TEST(WorldDetector, FindsTheSubjectOnEverySubjectImage) {
  int found = 0, found_degraded = 0, background = 0;
  const int n = 200;
  for (int i = 0; i < n; ++i) {
    auto scene = subject_scene(5, i, kImageSize);
    auto img = render_subject(scene, kImageSize);
    auto d = detect_world_image(img);
    found += d.has_subject;
    background += d.background == scene.background;
    found_degraded += detect_world_image(blurred_and_noisy(img, i, 12)).has_subject;
  }
  std::cout << "[ detector ] subject found " << found << "/" << n << ", blurred+noisy " << found_degraded
            << "/" << n << ", background " << background << "/" << n << "\n";
  EXPECT_EQ(found, n);
  EXPECT_GE(found_degraded, n * 95 / 100);
  EXPECT_GE(background, n * 97 / 100);
}

TEST(WorldDetector, FindsTheSubjectOnTheEvaluationBackground) {
  SubjectScene scene;
  scene.background = kSubjectPromptBackground;
  scene.style = BackgroundStyle::gradient;
  scene.center_x = scene.center_y = 30, scene.radius = 13;
  auto d = detect_world_image(render_subject(scene, kImageSize));
  EXPECT_TRUE(d.has_subject);
  EXPECT_EQ(d.background, "green");
}

TEST(WorldDetector, ReportsNoObjectOnAPlainImage) {
  Scene s;
  s.colour = "red", s.background = "blue", s.half_size = 0.1, s.center_x = s.center_y = 32;
  auto d = detect_world_image(render_scene(s, kImageSize));
  EXPECT_EQ(d.background, "blue");
  EXPECT_TRUE(d.colour.empty());
  EXPECT_FALSE(d.has_subject);
}

TEST(WorldDetector, RefusesAMismatchedBuffer) {
  io::Image img;
  img.width = img.height = 8;
  img.rgb.resize(10);
  EXPECT_THROW(detect_world_image(img), Error);
}

}  // namespace
}  // namespace dreamlora::synth
