#include "dreamlora/io/image_prechecks.h"

#include <algorithm>

namespace dreamlora::io {

namespace {

uint8_t byte_at(std::string_view b, size_t i) {
  return static_cast<uint8_t>(b[i]);
}

uint32_t be16_at(std::string_view b, size_t i) {
  return (uint32_t{byte_at(b, i)} << 8) | byte_at(b, i + 1);
}

uint32_t be32_at(std::string_view b, size_t i) {
  return (be16_at(b, i) << 16) | be16_at(b, i + 2);
}

uint32_t le16_at(std::string_view b, size_t i) {
  return (uint32_t{byte_at(b, i + 1)} << 8) | byte_at(b, i);
}

uint32_t le32_at(std::string_view b, size_t i) {
  return (le16_at(b, i + 2) << 16) | le16_at(b, i);
}

// Every 8x8 block of every component has its DC difference Huffman-coded in a baseline scan or in the
// first DC scan of a progressive JPEG, and a Huffman code is at least one bit long. So a complete
// frame needs at least one bit per block; arithmetic-coded frames (SOF9+, which stb refuses) do not
// count. `sof` is the index of the segment's length field.
int64_t min_scan_bits_of_frame(std::string_view b, size_t sof) {
  if (sof + 8 > b.size()) return 0;
  const int64_t height = be16_at(b, sof + 3), width = be16_at(b, sof + 5);
  const size_t components = byte_at(b, sof + 7);
  if (sof + 8 + 3 * components > b.size()) return 0;
  int64_t h_max = 1, v_max = 1;
  for (size_t c = 0; c < components; ++c) {
    const uint8_t hv = byte_at(b, sof + 9 + 3 * c);
    h_max = std::max<int64_t>(h_max, hv >> 4);
    v_max = std::max<int64_t>(v_max, hv & 15);
  }
  auto blocks = [](int64_t pixels, int64_t factor, int64_t max_factor) {
    return ((pixels * factor + max_factor - 1) / max_factor + 7) / 8;
  };
  int64_t bits = 0;
  for (size_t c = 0; c < components; ++c) {
    const uint8_t hv = byte_at(b, sof + 9 + 3 * c);
    bits += blocks(width, hv >> 4, h_max) * blocks(height, hv & 15, v_max);
  }
  return bits;
}

}  // namespace

// Debian's stb_image (2022-09) writes past its 257-entry size table when a DHT segment's 16 code counts
// add up to more than 256 (fixed upstream in 2.28). Such a table is invalid JPEG, so every DHT segment,
// before and between scans, is checked first. It also decodes a scan with a Huffman table that was never
// defined (symbol ids out of range); such scans are refused.
JpegStructure read_jpeg_structure(std::string_view b) {
  JpegStructure s;
  auto invalid = [&] {
    s.huffman_tables_valid = false;
    return s;
  };
  bool defined[8] = {};  // DC tables 0-3, AC tables 0-3
  bool in_scan = false;
  size_t i = 2;  // after SOI
  while (i + 4 <= b.size()) {
    if (byte_at(b, i) != 0xff) {  // entropy-coded data
      s.scan_bytes += in_scan;
      ++i;
      continue;
    }
    const uint8_t marker = byte_at(b, i + 1);
    if (marker == 0xff) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {  // stuffing, TEM, RSTn
      s.scan_bytes += in_scan ? 2 : 0;
      i += 2;
      continue;
    }
    if (marker == 0xd9) break;  // EOI
    const size_t length = be16_at(b, i + 2);
    if (length < 2) return invalid();
    if ((marker == 0xc0 || marker == 0xc1 || marker == 0xc2) && s.min_scan_bits == 0)
      s.min_scan_bits = min_scan_bits_of_frame(b, i + 2);
    if (marker == 0xda && i + 4 < b.size()) {  // SOS: every table a scan decodes with must be defined
      in_scan = true;
      const size_t n = byte_at(b, i + 4), spec = i + 5 + 2 * n;
      if (spec + 3 > b.size()) return invalid();
      const bool dc = byte_at(b, spec) == 0 && (byte_at(b, spec + 2) >> 4) == 0,
                 ac = byte_at(b, spec + 1) > 0;
      for (size_t c = 0; c < n; ++c) {
        const uint8_t tables = byte_at(b, i + 6 + 2 * c);
        if ((dc && !defined[(tables >> 4) & 3]) || (ac && !defined[4 + (tables & 3)])) return invalid();
      }
    }
    if (marker == 0xc4) {  // read as stb does: table after table until the segment length is used up
      long left = static_cast<long>(length) - 2;
      for (size_t p = i + 4; left > 0;) {
        if (p + 17 > b.size()) return invalid();
        defined[(byte_at(b, p) >> 4 ? 4 : 0) + (byte_at(b, p) & 3)] = true;
        size_t codes = 0;
        for (size_t k = 0; k < 16; ++k) codes += byte_at(b, p + 1 + k);
        if (codes > 256) return invalid();
        p += 17 + codes;
        left -= static_cast<long>(17 + codes);
      }
      if (left != 0) return invalid();
    }
    i += 2 + length;
  }
  return s;
}

// A zero-length IDAT chunk is valid PNG (the image data is the concatenation of all IDAT chunks), but
// when it comes before any non-empty one, Debian's stb_image calls memcpy(NULL, src, 0) (UBSan: null
// pointer argument). Dropping empty IDAT chunks leaves the image data unchanged.
// A chunk whose length runs past the end of the file makes stb fail, but only after it grew its IDAT
// buffer to that length (up to 2 GiB from a 71-byte file); such a file is reported before stb sees it.
// stb does not check chunk CRCs, and neither does this walk.
PngChunks read_png_chunks(std::string_view png) {
  constexpr size_t kSignature = 8, kChunkOverhead = 12;  // length, type, CRC
  PngChunks chunks;
  size_t copied_to = 0;
  for (size_t i = kSignature; i + kChunkOverhead <= png.size();) {
    const uint32_t length = be32_at(png, i);
    if (length > png.size() - i - kChunkOverhead) {
      chunks.chunk_past_end_at = i;
      chunks.chunk_past_end_length = length;
      break;
    }
    const std::string_view type = png.substr(i + 4, 4);
    if (type == "IDAT" && length == 0) {
      auto& out = chunks.without_empty_idat;
      if (!out) out.emplace();
      out->append(png.substr(copied_to, i - copied_to));
      copied_to = i + kChunkOverhead;
    }
    if (type == "IEND") break;
    i += kChunkOverhead + length;
  }
  if (chunks.without_empty_idat) chunks.without_empty_idat->append(png.substr(copied_to));
  return chunks;
}

// stb reads zeros past the end of a BMP and decodes the whole claimed size, like a JPEG's missing scan.
int64_t bmp_min_pixel_bytes(std::string_view b) {
  constexpr size_t kInfoHeaderAt = 14;
  if (b.size() < kInfoHeaderAt + 16) return 0;
  const bool core_header = le32_at(b, kInfoHeaderAt) == 12;  // BITMAPCOREHEADER: 16-bit sizes
  int64_t width = 0, height = 0, bits_per_pixel = 0;
  if (core_header) {
    width = le16_at(b, 18), height = le16_at(b, 20), bits_per_pixel = le16_at(b, 24);
  } else {
    if (b.size() < 30) return 0;
    width = static_cast<int32_t>(le32_at(b, 18)), height = static_cast<int32_t>(le32_at(b, 22));
    bits_per_pixel = le16_at(b, 28);
  }
  width = width < 0 ? -width : width, height = height < 0 ? -height : height;  // negative: top-down
  constexpr int64_t kBeyondAnyCap = int64_t{1} << 20;  // larger sizes and depths are refused later anyway
  if (width > kBeyondAnyCap || height > kBeyondAnyCap || bits_per_pixel > 64) return 0;
  return (width * bits_per_pixel + 7) / 8 * height;
}

}  // namespace dreamlora::io
