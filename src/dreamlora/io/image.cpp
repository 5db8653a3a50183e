#include "dreamlora/io/image.h"

#include <libexif/exif-data.h>
#include <stb/stb_image_write.h>

#include "dreamlora/io/image_prechecks.h"

// stb_image, compiled here (static) with only the decoders the trainer accepts: its other decoders
// (GIF, PSD, HDR, PIC, PNM, TGA) carry most of its CVE history and are not reachable at all.
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS 16384
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"

#ifdef DREAMLORA_HAVE_WEBP
#include <webp/decode.h>
#endif
#ifdef DREAMLORA_HAVE_WEBPDEMUX
#include <webp/demux.h>
#endif

namespace dreamlora::io {

namespace fs = std::filesystem;

namespace {

std::string lower_extension(const fs::path& path) {
  auto ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

int exif_orientation(std::string_view jpeg) {
  ExifData* data = exif_data_new_from_data(reinterpret_cast<const unsigned char*>(jpeg.data()),
                                           static_cast<unsigned int>(jpeg.size()));
  if (data == nullptr) return 1;
  int orientation = 1;
  if (ExifEntry* entry = exif_data_get_entry(data, EXIF_TAG_ORIENTATION)) {
    if (entry->format == EXIF_FORMAT_SHORT && entry->size >= 2)
      orientation = exif_get_short(entry->data, exif_data_get_byte_order(data));
  }
  exif_data_unref(data);
  return (orientation >= 1 && orientation <= 8) ? orientation : 1;
}

enum class ImageFormat { kPng, kJpeg, kBmp, kWebp, kUnknown };

ImageFormat sniff_format(std::string_view b) {
  auto starts = [&](std::string_view magic, size_t at = 0) {
    return b.size() >= at + magic.size() && b.substr(at, magic.size()) == magic;
  };
  if (starts("\x89PNG\r\n\x1a\n")) return ImageFormat::kPng;
  if (starts("\xff\xd8\xff")) return ImageFormat::kJpeg;
  if (starts("BM")) return ImageFormat::kBmp;
  if (starts("RIFF") && starts("WEBP", 8)) return ImageFormat::kWebp;
  return ImageFormat::kUnknown;
}

// Refuses sizes that would make the decoder allocate more than a training image ever needs, before it
// allocates anything.
void check_dimensions(int width, int height, const std::string& name) {
  DL_CHECK(width > 0 && height > 0, name, ": image has zero size");
  DL_CHECK(width <= kMaxImageSide && height <= kMaxImageSide &&
               static_cast<int64_t>(width) * height <= kMaxImagePixels,
           name, ": image is ", width, "x", height, " pixels; at most ", kMaxImageSide, " a side and ",
           kMaxImagePixels, " pixels in all are accepted");
}

#ifdef DREAMLORA_HAVE_WEBP
// An animated WebP trains on its first frame, placed on its canvas (PIL and A1111 read the same frame).
Image decode_webp_first_frame(std::string_view bytes, const std::string& name) {
#ifdef DREAMLORA_HAVE_WEBPDEMUX
  WebPData webp{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
  std::unique_ptr<WebPDemuxer, void (*)(WebPDemuxer*)> demux(WebPDemux(&webp), WebPDemuxDelete);
  DL_CHECK(demux != nullptr, name, ": not a readable animated WebP image");
  Image img;
  img.width = static_cast<int>(WebPDemuxGetI(demux.get(), WEBP_FF_CANVAS_WIDTH));
  img.height = static_cast<int>(WebPDemuxGetI(demux.get(), WEBP_FF_CANVAS_HEIGHT));
  check_dimensions(img.width, img.height, name);
  WebPIterator frame;
  DL_CHECK(WebPDemuxGetFrame(demux.get(), 1, &frame) != 0, name, ": animated WebP without a first frame");
  int fw = 0, fh = 0;
  uint8_t* out = WebPDecodeRGB(frame.fragment.bytes, frame.fragment.size, &fw, &fh);
  const int x0 = frame.x_offset, y0 = frame.y_offset;
  WebPDemuxReleaseIterator(&frame);
  DL_CHECK(out != nullptr, name, ": the first frame of the animated WebP cannot be decoded");
  img.rgb.assign(static_cast<size_t>(img.width) * img.height * 3, 0);
  for (int y = 0; y < fh && y0 + y < img.height; ++y)
    for (int x = 0; x < fw && x0 + x < img.width; ++x)
      std::memcpy(&img.rgb[(static_cast<size_t>(y0 + y) * img.width + x0 + x) * 3],
                  &out[(static_cast<size_t>(y) * fw + x) * 3], 3);
  WebPFree(out);
  return img;
#else
  fail(str(name,
           ": an animated WebP; this build reads only still WebPs (install libwebpdemux and rebuild, or "
           "save its first frame as PNG)"));
#endif
}
#endif

Image decode_webp(std::string_view bytes, const std::string& name) {
#ifdef DREAMLORA_HAVE_WEBP
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  Image img;
  DL_CHECK(WebPGetInfo(data, bytes.size(), &img.width, &img.height) != 0, name,
           ": not a readable WebP image");
  check_dimensions(img.width, img.height, name);
  WebPBitstreamFeatures features;
  DL_CHECK(WebPGetFeatures(data, bytes.size(), &features) == VP8_STATUS_OK, name,
           ": not a readable WebP image");
  if (features.has_animation) return decode_webp_first_frame(bytes, name);
  uint8_t* out = WebPDecodeRGB(data, bytes.size(), &img.width, &img.height);
  DL_CHECK(out != nullptr, name, ": not a readable WebP image");
  img.rgb.assign(out, out + static_cast<size_t>(img.width) * img.height * 3);
  WebPFree(out);
  return img;
#else
  fail(str(name, ": WebP support was not built in (install libwebp-dev and rebuild)"));
#endif
}

Image decode_stb(std::string_view bytes, const std::string& name) {
  DL_CHECK(bytes.size() <= static_cast<size_t>(INT32_MAX), name, ": image file is over 2 GiB");
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(bytes.size());
  Image img;
  int channels = 0;
  DL_CHECK(stbi_info_from_memory(data, size, &img.width, &img.height, &channels) != 0, name,
           ": cannot decode image (", stbi_failure_reason(), ")");
  check_dimensions(img.width, img.height, name);
  int w = 0, h = 0;
  unsigned char* pixels = stbi_load_from_memory(data, size, &w, &h, &channels, 3);
  DL_CHECK(pixels != nullptr, name, ": cannot decode image (", stbi_failure_reason(), ")");
  DL_CHECK(w == img.width && h == img.height, name, ": decoded size differs from the header's");
  img.rgb.assign(pixels, pixels + static_cast<size_t>(w) * h * 3);
  stbi_image_free(pixels);
  return img;
}

// stb_image pads a scan that ends early with zeros and decodes the whole size the header claims, so a
// 61-byte progressive JPEG claiming 12809 x 2048 pixels cost the time and memory of a 26-megapixel image
// (over 10 s under ASan). A file with less scan data than one bit per 8x8 block cannot hold a complete
// image (see min_scan_bits_of_frame) and is refused before stb allocates anything; this bounds the
// pixels decoded per input byte at 512.
void check_jpeg_structure(std::string_view bytes, const std::string& name) {
  const JpegStructure jpeg = read_jpeg_structure(bytes);
  DL_CHECK(jpeg.huffman_tables_valid, name, ": cannot decode image (bad Huffman table: corrupt JPEG)");
  DL_CHECK(jpeg.scan_bytes * 8 >= jpeg.min_scan_bits, name, ": truncated or corrupt JPEG: it holds ",
           jpeg.scan_bytes, " bytes of image data, but its frame needs at least ",
           (jpeg.min_scan_bits + 7) / 8, " (one bit per 8x8 block of each colour component)");
}

void append_chunk(std::string& png, const char type[4], const std::string& data) {
  uint32_t len = static_cast<uint32_t>(data.size());
  for (int i = 3; i >= 0; --i) png.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  std::string body = std::string(type, 4) + data;
  png += body;
  uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size()));
  for (int i = 3; i >= 0; --i) png.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
}

void stb_append(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), size);
}

uint32_t read_be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

}  // namespace

bool is_image_file(const fs::path& path) {
  auto ext = lower_extension(path);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".webp";
}

Image apply_orientation(const Image& in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  // Orientations 5-8 swap the axes; each maps an output pixel back to a source pixel.
  const bool transpose = orientation >= 5;
  Image out;
  out.width = transpose ? in.height : in.width;
  out.height = transpose ? in.width : in.height;
  out.rgb.resize(in.rgb.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = 0, sy = 0;
      switch (orientation) {
        case 2:
          sx = in.width - 1 - x;
          sy = y;
          break;
        case 3:
          sx = in.width - 1 - x;
          sy = in.height - 1 - y;
          break;
        case 4:
          sx = x;
          sy = in.height - 1 - y;
          break;
        case 5:
          sx = y;
          sy = x;
          break;
        case 6:
          sx = y;
          sy = in.height - 1 - x;
          break;
        case 7:
          sx = in.width - 1 - y;
          sy = in.height - 1 - x;
          break;
        case 8:
          sx = in.width - 1 - y;
          sy = x;
          break;
      }
      std::memcpy(&out.rgb[(static_cast<size_t>(y) * out.width + x) * 3],
                  &in.rgb[(static_cast<size_t>(sy) * in.width + sx) * 3], 3);
    }
  }
  return out;
}

Image decode_image(std::string_view bytes, const std::string& name) {
  DL_CHECK(!bytes.empty(), name, ": image file is empty (0 bytes)");
  Image img;
  switch (sniff_format(bytes)) {
    case ImageFormat::kWebp:
      img = decode_webp(bytes, name);
      break;
    case ImageFormat::kPng: {
      const PngChunks chunks = read_png_chunks(bytes);
      DL_CHECK(!chunks.chunk_past_end_at, name, ": truncated or corrupt PNG: the chunk at byte ",
               chunks.chunk_past_end_at.value_or(0), " claims ", chunks.chunk_past_end_length.value_or(0),
               " bytes, more than the file has left");
      img =
          decode_stb(chunks.without_empty_idat ? std::string_view(*chunks.without_empty_idat) : bytes, name);
      break;
    }
    case ImageFormat::kBmp: {
      const int64_t pixel_bytes = bmp_min_pixel_bytes(bytes);
      DL_CHECK(static_cast<int64_t>(bytes.size()) >= pixel_bytes, name,
               ": truncated or corrupt BMP: its header claims ", pixel_bytes,
               " bytes of pixels, but the file has ", bytes.size(), " bytes in all");
      img = decode_stb(bytes, name);
      break;
    }
    case ImageFormat::kJpeg:
      check_jpeg_structure(bytes, name);
      img = apply_orientation(decode_stb(bytes, name), exif_orientation(bytes));
      break;
    case ImageFormat::kUnknown:
      fail(str(name, ": not a PNG, JPEG, BMP or WebP image (by its first bytes)"));
  }
  return img;
}

Image load_image(const fs::path& path) {
  DL_CHECK(fs::exists(path), path.string(), ": image file not found");
  DL_CHECK(is_image_file(path), path.string(), ": not a supported image type (png, jpg, jpeg, bmp, webp)");
  return decode_image(read_file(path), path.string());
}

std::string encode_png(const Image& image, const TextChunks& text) {
  DL_CHECK(image.width > 0 && image.height > 0 &&
               image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
           "encode_png: image buffer does not match its ", image.width, "x", image.height, " size");
  std::string png;
  int ok = stbi_write_png_to_func(stb_append, &png, image.width, image.height, 3, image.rgb.data(),
                                  image.width * 3);
  DL_CHECK(ok != 0 && png.size() > 33, "encode_png: PNG encoder failed");
  // Insert tEXt chunks right after IHDR (8-byte signature + 25-byte IHDR chunk).
  std::string chunks;
  for (const auto& [key, value] : text) append_chunk(chunks, "tEXt", key + std::string(1, '\0') + value);
  png.insert(33, chunks);
  return png;
}

void save_png(const fs::path& path, const Image& image, const TextChunks& text) {
  write_file_durably(path, encode_png(image, text));
}

TextChunks read_png_text(const fs::path& path) {
  std::string png = read_file(path);
  TextChunks out;
  size_t at = 8;
  while (at + 12 <= png.size()) {
    uint32_t len = read_be32(png, at);
    if (at + 12 + len > png.size()) break;
    std::string type = png.substr(at + 4, 4);
    if (type == "tEXt") {
      std::string data = png.substr(at + 8, len);
      auto nul = data.find('\0');
      if (nul != std::string::npos) out.emplace_back(data.substr(0, nul), data.substr(nul + 1));
    }
    if (type == "IEND") break;
    at += 12 + len;
  }
  return out;
}

}  // namespace dreamlora::io
