// Images on disk <-> 8-bit RGB in memory: PNG/JPEG/BMP (stb), WebP (libwebp), JPEG EXIF orientation
// (libexif), and PNG output carrying text chunks (prompt, seed, sampler) as A1111 users expect.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dreamlora::io {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// Decodes any supported file to RGB (alpha dropped, grey expanded, EXIF orientation applied).
// Errors name the file and what is wrong (unreadable, unsupported format, zero size).
// The format is taken from the first bytes (a .jpg that holds a PNG decodes); only PNG, JPEG (baseline
// and progressive), BMP and WebP decoders exist in the binary. Sizes over the caps below are refused
// from the header, before any pixel memory is allocated.
Image load_image(const std::filesystem::path& path);
// The same from bytes in memory; `name` is what errors call the image.
Image decode_image(std::string_view bytes, const std::string& name);
constexpr int kMaxImageSide = 16384;
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;   // 8192 x 8192
bool is_image_file(const std::filesystem::path& path);  // by extension: png jpg jpeg bmp webp

using TextChunks = std::vector<std::pair<std::string, std::string>>;
// Encodes a PNG with tEXt chunks and writes it durably.
void save_png(const std::filesystem::path& path, const Image& image, const TextChunks& text = {});
std::string encode_png(const Image& image, const TextChunks& text = {});
// Reads the tEXt chunks back (for tests and inspect).
TextChunks read_png_text(const std::filesystem::path& path);

// Applies an EXIF orientation (1..8) to an image.
Image apply_orientation(const Image& image, int orientation);

}  // namespace dreamlora::io
