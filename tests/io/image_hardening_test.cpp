// The image decoders as the trainer calls them refuse what they were not built for: formats other than
// PNG, JPEG, BMP and WebP, and headers that claim more pixels than a training image ever has (refused
// before any pixel memory is allocated). Inputs found by fuzz/image_fuzz.cpp are replayed here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image.h"
#include "dreamlora/io/image_prechecks.h"
#include "test_util.h"

namespace dreamlora::io {
namespace {

std::string message_of(std::string_view bytes) {
  try {
    decode_image(bytes, "input.img");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string be32(uint32_t v) {
  return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

// A PNG signature and IHDR that claim width x height (the CRC is not checked before the size).
std::string png_header(uint32_t width, uint32_t height) {
  return std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + "IHDR" + be32(width) + be32(height) +
         std::string("\x08\x02\x00\x00\x00", 5) + be32(0);
}

TEST(ImageHardening, FormatsOtherThanPngJpegBmpWebpAreRefusedByTheirFirstBytes) {
  for (std::string bytes :
       {std::string("GIF89a\x01\x00\x01\x00\x00\x00\x00", 13), std::string("8BPS\x00\x01", 6),  // PSD
        std::string("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n"),                                    // HDR
        std::string("P6\n1 1\n255\n\x00\x00\x00", 14),                                          // PNM
        std::string("\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x18\x00",
                    18)}) {  // TGA
    const std::string m = message_of(bytes);
    EXPECT_NE(m.find("not a PNG, JPEG, BMP or WebP image"), std::string::npos) << m;
    EXPECT_NE(m.find("input.img"), std::string::npos) << m;
  }
}

TEST(ImageHardening, HugeDimensionsAreRefusedFromTheHeaderNamingTheSize) {
  std::string m = message_of(png_header(100000, 100000));
  EXPECT_NE(m.find("input.img"), std::string::npos) << m;
  EXPECT_FALSE(m.empty());
  m = message_of(png_header(12000, 12000));  // each side allowed, the product is not
  EXPECT_NE(m.find("12000x12000 pixels"), std::string::npos) << m;
  // BMP: width 20000, height 1.
  std::string bmp = "BM" + std::string(12, '\0') + std::string("\x28\x00\x00\x00", 4) +
                    std::string("\x20\x4e\x00\x00\x01\x00\x00\x00\x01\x00\x18\x00", 12) +
                    std::string(24, '\0');
  m = message_of(bmp);
  EXPECT_FALSE(m.empty());
}

TEST(ImageHardening, ContentDecidesTheDecoderNotTheExtension) {
  Image img;
  img.width = 2;
  img.height = 1;
  img.rgb = {1, 2, 3, 4, 5, 6};
  auto dir = dreamlora::testing::make_temp_dir("img-sniff");
  save_png(dir / "really-a-png.jpg", img);
  EXPECT_EQ(load_image(dir / "really-a-png.jpg").rgb, img.rgb);
  std::filesystem::remove_all(dir);
}

std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The fuzzer's seed images (PNG grey/RGB/RGBA/palette, BMP, baseline and progressive JPEG, JPEG with
// EXIF orientation 6, lossy and lossless WebP) all decode.
TEST(ImageHardening, EverySeedImageOfTheFuzzCorpusDecodes) {
  const auto dir = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "corpus" / "image_fuzz";
  int decoded = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    Image img = decode_image(file_bytes(e.path()), e.path().string());
    EXPECT_GT(img.width, 0) << e.path();
    EXPECT_EQ(img.rgb.size(), static_cast<size_t>(img.width) * img.height * 3) << e.path();
    ++decoded;
  }
  EXPECT_GE(decoded, 10);
}

// Found by image_fuzz: a DHT segment whose code counts add up to more than 256 made Debian's stb_image
// write past its Huffman size table (UBSan: index 257 out of bounds for 'stbi_uc[257]').
// A second input had the table run past the end of its DHT segment, where stb keeps reading; a third
// decoded a scan with an AC table that was never defined (UBSan: values[] index -64948).
TEST(ImageHardening, JpegHuffmanTablesStbWouldOverflowOnAreRefusedBeforeStbSeesThem) {
  const auto dir = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "regressions" / "image_fuzz";
  for (const char* name : {"jpeg-dht-counts-over-256.jpg", "jpeg-dht-table-past-segment-end.jpg",
                           "jpeg-scan-uses-undefined-huffman-table.jpg"}) {
    const std::string m = message_of(file_bytes(dir / name));
    EXPECT_NE(m.find("bad Huffman table"), std::string::npos) << name << ": " << m;
  }
}

// Found by image_fuzz: a 61-byte progressive JPEG claiming 12809 x 2048 pixels took over 10 s under ASan,
// as stb decodes the whole claimed size from zero padding. Less scan data than one bit per 8x8 block is
// refused before stb allocates anything, naming the file and the bytes it lacks.
TEST(ImageHardening, JpegWithLessScanDataThanItsSizeNeedsIsRefusedBeforeDecoding) {
  const auto path = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "regressions" / "image_fuzz" /
                    "progressive-jpeg-12809x2048-from-61-bytes.jpg";
  std::string m;
  try {
    decode_image(file_bytes(path), path.string());
  } catch (const Error& e) {
    m = e.what();
  }
  EXPECT_NE(m.find("truncated or corrupt JPEG"), std::string::npos) << m;
  EXPECT_NE(m.find(path.string()), std::string::npos) << m;
  EXPECT_NE(m.find("holds 0 bytes of image data"), std::string::npos) << m;
}

// The same bound for a baseline JPEG: the corpus's 8x8 image with its frame header claiming 256 x 256.
TEST(ImageHardening, BaselineJpegWhoseScanIsTooShortForItsClaimedSizeIsRefusedAsTruncated) {
  std::string jpeg = file_bytes(std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "corpus" /
                                "image_fuzz" / "baseline.jpg");
  ASSERT_EQ(decode_image(jpeg, "baseline.jpg").width, 8);
  const auto sof = jpeg.find("\xff\xc0");
  ASSERT_NE(sof, std::string::npos);
  jpeg.replace(sof + 5, 4, std::string("\x01\x00\x01\x00", 4));  // height, width
  const std::string m = message_of(jpeg);
  EXPECT_NE(m.find("input.img: truncated or corrupt JPEG"), std::string::npos) << m;
  EXPECT_NE(m.find("needs at least 192"), std::string::npos) << m;  // 1024 + 2 x 256 blocks (4:2:0)
}

// Found by image_fuzz: a PNG whose first IDAT chunk is empty made Debian's stb_image call
// memcpy(NULL, src, 0) (UBSan). Empty IDAT chunks are valid PNG and are dropped before stb sees them: a
// PNG with one decodes to the same pixels as without. fuzz/regressions/image_fuzz/png-empty-first-idat.png
// is that PNG, for the fuzz build (UBSan) to replay.
TEST(ImageHardening, PngWithAnEmptyFirstIdatChunkDecodesAsWithoutIt) {
  const auto dir = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz";
  const std::string png = file_bytes(dir / "corpus" / "image_fuzz" / "rgb.png");
  const size_t idat = png.find("IDAT") - 4;
  const std::string with_empty = png.substr(0, idat) + be32(0) + "IDAT" + be32(0x35af061e) + png.substr(idat);
  EXPECT_EQ(file_bytes(dir / "regressions" / "image_fuzz" / "png-empty-first-idat.png"), with_empty);
  EXPECT_FALSE(read_png_chunks(png).without_empty_idat.has_value());
  ASSERT_TRUE(read_png_chunks(with_empty).without_empty_idat.has_value());
  EXPECT_EQ(*read_png_chunks(with_empty).without_empty_idat, png);
  const Image a = decode_image(png, "rgb.png"), b = decode_image(with_empty, "with-empty-idat.png");
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.rgb, b.rgb);
}

// Found by image_fuzz: a 71-byte PNG whose IDAT chunk claims 1,936,916,494 bytes made stb grow its buffer
// to 2 GiB before failing (a timeout under ASan). A chunk that runs past the end of the file is refused
// first, naming the file, the chunk's offset and its length; so is the fuzzer's empty-IDAT input, whose
// next chunk does the same.
TEST(ImageHardening, PngChunkLongerThanTheRestOfTheFileIsRefusedBeforeStbAllocates) {
  const auto dir = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "regressions" / "image_fuzz";
  std::string m = message_of(file_bytes(dir / "png-idat-claims-1.9-gb.png"));
  EXPECT_NE(m.find("input.img: truncated or corrupt PNG: the chunk at byte 33 claims 1936916494 bytes"),
            std::string::npos)
      << m;
  m = message_of(file_bytes(dir / "png-zero-length-idat-memcpy-null.png"));
  EXPECT_NE(m.find("truncated or corrupt PNG"), std::string::npos) << m;
}

// stb reads zeros past the end of a BMP too: the corpus's 3x2 BMP with a header claiming 3000 x 2000 is
// refused from its size before stb decodes 6 megapixels of nothing.
TEST(ImageHardening, BmpShorterThanTheRowsItsHeaderClaimsIsRefusedAsTruncated) {
  std::string bmp =
      file_bytes(std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "corpus" / "image_fuzz" / "rgb.bmp");
  ASSERT_EQ(decode_image(bmp, "rgb.bmp").width, 3);
  bmp.replace(18, 8, std::string("\xb8\x0b\x00\x00\xd0\x07\x00\x00", 8));  // 3000 x 2000, little-endian
  const std::string m = message_of(bmp);
  EXPECT_NE(m.find("input.img: truncated or corrupt BMP: its header claims 18000000 bytes of pixels"),
            std::string::npos)
      << m;
}

// Every file in fuzz/regressions/image_fuzz/ (inputs that once crashed or hung a decoder) gives an Image or
// a dreamlora::Error.
TEST(ImageHardening, FuzzRegressionInputsDecodeOrFailCleanly) {
  const auto dir = std::filesystem::path(DREAMLORA_SOURCE_DIR) / "fuzz" / "regressions" / "image_fuzz";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no regression inputs in " << dir;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    try {
      Image img = decode_image(file_bytes(e.path()), e.path().string());
      EXPECT_EQ(img.rgb.size(), static_cast<size_t>(img.width) * img.height * 3);
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace dreamlora::io
