// Captions beside the images (kohya's and SimpleTuner's convention): --caption-extension picks the
// files, --caption-template wraps their text, --prompt is the caption of images without one.
#include <gtest/gtest.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "dreamlora/train/dataset.h"
#include "dreamlora/train/train_config.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dreamlora;
using namespace dreamlora::train;
using namespace dreamlora::io;

namespace {

void write_caption_file(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

fs::path captioned_folder(const std::string& tag) {
  auto dir = dreamlora::testing::make_temp_dir(tag);
  Image img{2, 2, std::vector<uint8_t>(12, 128)};
  for (const char* name : {"a.png", "b.png", "c.png"}) save_png(dir / name, img);
  write_caption_file(dir / "a.txt", "  a dog on a beach\n");
  write_caption_file(dir / "b.caption", "a dog in snow");
  return dir;
}

}  // namespace

TEST(Captions, TxtFileBesideTheImageElseThePrompt) {
  auto dir = captioned_folder("captions-txt");
  auto images = list_training_images(dir, "a photo of sks dog", "--image-path");
  ASSERT_EQ(images.size(), 3u);
  EXPECT_EQ(images[0].caption, "a dog on a beach");
  EXPECT_EQ(images[1].caption, "a photo of sks dog");  // b.caption is not read with the default .txt
  EXPECT_EQ(images[2].caption, "a photo of sks dog");
}

TEST(Captions, CaptionExtensionPicksTheFiles) {
  auto dir = captioned_folder("captions-ext");
  auto images = list_training_images(dir, "a photo of sks dog", "--image-path", {".caption", ""});
  EXPECT_EQ(images[0].caption, "a photo of sks dog");
  EXPECT_EQ(images[1].caption, "a dog in snow");
}

TEST(Captions, TemplateWrapsCaptionFilesAndLeavesThePromptAlone) {
  auto dir = captioned_folder("captions-template");
  auto images = list_training_images(dir, "a photo of sks dog", "--image-path",
                                     {".txt", "a photo of sks dog, {caption}"});
  EXPECT_EQ(images[0].caption, "a photo of sks dog, a dog on a beach");
  EXPECT_EQ(images[2].caption, "a photo of sks dog");
  auto with_prompt = list_training_images(dir, "sks dog", "--image-path", {".txt", "{prompt}: {caption}"});
  EXPECT_EQ(with_prompt[0].caption, "sks dog: a dog on a beach");
}

TEST(Captions, EmptyCaptionFileIsAnErrorNamingIt) {
  auto dir = captioned_folder("captions-empty");
  write_caption_file(dir / "c.txt", " \n");
  try {
    list_training_images(dir, "a photo of sks dog", "--image-path");
    FAIL() << "an empty caption file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.txt"), std::string::npos) << e.what();
  }
}

TEST(Captions, FlagsAreValidatedAndFingerprinted) {
  TrainConfig c;
  c.model = "m";
  c.image_path = "i";
  c.prompt = "a photo of sks dog";
  c.caption_template = "no placeholder";
  EXPECT_THROW(c.validate(), Error);
  c.caption_template = "";
  c.caption_extension = "txt";
  EXPECT_THROW(c.validate(), Error);
  auto settings = result_settings(TrainConfig{});
  EXPECT_TRUE(settings.contains("caption-extension"));
  EXPECT_TRUE(settings.contains("caption-template"));
  ASSERT_NE(find_train_option("caption_extension"), nullptr);
}
