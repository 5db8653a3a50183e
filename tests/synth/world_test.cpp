#include "dreamlora/synth/world.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "test_util.h"

namespace dreamlora::synth {
namespace {

constexpr int kSize = 64;
constexpr uint64_t kPinnedWorldChecksum =
    0x2a18c6c3b9772005ULL;  // of the first 16 world and 4 subject images, seed 0

uint64_t fnv1a(const std::vector<uint8_t>& bytes, uint64_t h = 1469598103934665603ULL) {
  for (uint8_t b : bytes) h = (h ^ b) * 1099511628211ULL;
  return h;
}

TEST(World, SameSeedAndIndexGiveTheSameBytesAndCaption) {
  for (uint64_t i = 0; i < 20; ++i) {
    auto a = world_sample(7, i, kSize), b = world_sample(7, i, kSize);
    EXPECT_EQ(a.image.rgb, b.image.rgb);
    EXPECT_EQ(a.caption, b.caption);
  }
  EXPECT_NE(world_sample(7, 0, kSize).image.rgb, world_sample(8, 0, kSize).image.rgb);
  EXPECT_NE(world_sample(7, 0, kSize).image.rgb, world_sample(7, 1, kSize).image.rgb);
}

// The draws use only mt19937_64's raw output, so these bytes are the same on every platform and libtorch.
TEST(World, FirstImagesMatchTheirPinnedChecksum) {
  uint64_t h = 1469598103934665603ULL;
  for (uint64_t i = 0; i < 16; ++i) h = fnv1a(world_sample(0, i, kSize).image.rgb, h);
  for (uint64_t i = 0; i < 4; ++i) h = fnv1a(render_subject(subject_scene(0, i, kSize), kSize).rgb, h);
  EXPECT_EQ(h, kPinnedWorldChecksum) << "world images changed: 0x" << std::hex << h;
}

TEST(World, CaptionsSayTheDrawnAttributes) {
  std::set<CaptionForm> forms;
  for (uint64_t i = 0; i < 500; ++i) {
    const auto s = world_sample(3, i, kSize);
    forms.insert(s.scene.caption_form);
    const std::string shape = shape_name(s.scene.shape);
    const std::string on_bg = " on a" + std::string(s.scene.background == "orange" ? "n " : " ") +
                              s.scene.background + " background";
    switch (s.scene.caption_form) {
      case CaptionForm::full:
        EXPECT_EQ(s.caption, "a photo of a " + s.scene.colour + " " + shape + on_bg);
        break;
      case CaptionForm::shape_only:
        EXPECT_EQ(s.caption, "a photo of a " + s.scene.colour + " " + shape);
        break;
      case CaptionForm::toy_on_background:
        EXPECT_EQ(s.caption, "a photo of a " + s.scene.colour + " toy" + on_bg);
        break;
      case CaptionForm::colour_toy:
        EXPECT_EQ(s.caption, "a photo of a " + s.scene.colour + " toy");
        break;
      case CaptionForm::toy:
        EXPECT_EQ(s.caption, "a photo of a toy");
        break;
    }
  }
  EXPECT_EQ(forms.size(), 5u) << "every caption form occurs in 500 samples";
}

TEST(World, ToyCaptionsAreAtLeastFifteenPercent) {
  int toy = 0;
  for (uint64_t i = 0; i < 2000; ++i) toy += world_sample(1, i, 32).caption.find(" toy") != std::string::npos;
  EXPECT_GE(toy, 300);
  EXPECT_LE(toy, 600);
}

TEST(World, HeldOutCombinationsNeverAppearInTwoThousandSamples) {
  ASSERT_EQ(held_out_combinations().size(), 8u);
  for (const auto& c : held_out_combinations()) EXPECT_TRUE(distinct_colours(c.colour, c.background));
  for (uint64_t i = 0; i < 2000; ++i) {
    const auto s = world_scene(0, i, kSize);
    EXPECT_FALSE(is_held_out(s.colour, s.shape, s.background)) << i;
  }
}

TEST(World, ObjectColourDiffersClearlyFromItsBackgroundAndTheObjectIsInside) {
  std::set<std::string> colours, backgrounds;
  for (uint64_t i = 0; i < 2000; ++i) {
    const auto s = world_scene(0, i, kSize);
    colours.insert(s.colour), backgrounds.insert(s.background);
    EXPECT_NE(s.colour, s.background);
    EXPECT_TRUE(distinct_colours(s.colour, s.background));
    EXPECT_GE(s.center_x - s.half_size, 0.0);
    EXPECT_LE(s.center_x + s.half_size, kSize);
    EXPECT_GE(s.center_y - s.half_size, 0.0);
    EXPECT_LE(s.center_y + s.half_size, kSize);
    EXPECT_GE(2 * s.half_size, 17.9);
    EXPECT_LE(2 * s.half_size, 34.1);
  }
  EXPECT_EQ(colours.size(), object_colours().size());
  EXPECT_EQ(backgrounds.size(), background_colours().size());
}

TEST(World, ShapesFillTheirBoxAndRingsHaveAHole) {
  for (Shape s : all_shapes()) {
    EXPECT_EQ(shape_by_name(shape_name(s)), s);
    EXPECT_TRUE(shape_contains(s, 0.0, 0.5)) << shape_name(s);
  }
  EXPECT_FALSE(shape_contains(Shape::ring, 0.0, 0.0));
  EXPECT_TRUE(shape_contains(Shape::circle, 0.0, 0.0));
  EXPECT_TRUE(shape_contains(Shape::star, 0.0, -0.99));  // the top point
  EXPECT_TRUE(shape_contains(Shape::triangle, 0.0, -0.99));
  EXPECT_FALSE(shape_contains(Shape::triangle, -0.9, -0.9));
  EXPECT_TRUE(shape_contains(Shape::square, -0.99, -0.99));
  EXPECT_FALSE(shape_contains(Shape::circle, -0.9, -0.9));
}

TEST(World, PromptsUseTheCaptionGrammar) {
  EXPECT_EQ(world_prompt("red", Shape::star, "blue"), "a photo of a red star on a blue background");
  EXPECT_EQ(world_prompt("blue", Shape::ring, "orange"), "a photo of a blue ring on an orange background");
  EXPECT_EQ(subject_prompt("sks"), "a photo of sks toy");
  EXPECT_EQ(subject_prompt("sks", "green"), "a photo of sks toy on a green background");
  EXPECT_THROW(colour_by_name("teal"), Error);
  EXPECT_THROW(shape_by_name("hexagon"), Error);
}

TEST(World, WriteWorldDataWritesImagesWithCaptionFiles) {
  auto dir = testing::make_temp_dir("world_data");
  write_world_data(dir, 3, 5, 32);
  for (int i = 0; i < 3; ++i) {
    const std::string name = "00000" + std::to_string(i);
    auto img = io::load_image(dir / (name + ".png"));
    EXPECT_EQ(img.width, 32);
    EXPECT_EQ(img.rgb, world_sample(5, i, 32).image.rgb);
    EXPECT_EQ(testing::read_text(dir / (name + ".txt")), world_sample(5, i, 32).caption + "\n");
  }
  write_world_subject(dir / "subject", 2, 0, 48);
  EXPECT_EQ(io::load_image(dir / "subject" / "subject-1.png").width, 48);
  std::filesystem::remove_all(dir);
}

TEST(World, SubjectBackgroundsKeepRedAndYellowClear) {
  const auto& names = subject_backgrounds();
  EXPECT_GE(names.size(), 4u);
  for (const auto& n : names) EXPECT_TRUE(n != "red" && n != "yellow" && n != "orange") << n;
  EXPECT_EQ(std::find(names.begin(), names.end(), kSubjectPromptBackground), names.end());
  std::set<std::string> first;
  for (uint64_t i = 0; i < names.size(); ++i) first.insert(subject_scene(4, i, kSize).background);
  EXPECT_EQ(first.size(), names.size()) << "consecutive subject images cycle through the backgrounds";
}

}  // namespace
}  // namespace dreamlora::synth
