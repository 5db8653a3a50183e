// Images on disk <-> 8-bit RGB in memory: PNG/JPEG/BMP (stb), WebP (libwebp), JPEG EXIF orientation
// (libexif), and PNG output carrying text chunks (prompt, seed, sampler) as A1111 users expect.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace dreamlora {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// Decodes any supported file to RGB (alpha dropped, grey expanded, EXIF orientation applied).
// Errors name the file and what is wrong (unreadable, unsupported format, zero size).
Image load_image(const std::filesystem::path& path);
bool is_image_file(const std::filesystem::path& path);  // by extension: png jpg jpeg bmp webp

using TextChunks = std::vector<std::pair<std::string, std::string>>;
// Encodes a PNG with tEXt chunks and writes it durably.
void save_png(const std::filesystem::path& path, const Image& image, const TextChunks& text = {});
std::string encode_png(const Image& image, const TextChunks& text = {});
// Reads the tEXt chunks back (for tests and inspect).
TextChunks read_png_text(const std::filesystem::path& path);

// Applies an EXIF orientation (1..8) to an image.
Image apply_orientation(const Image& image, int orientation);

}  // namespace dreamlora
