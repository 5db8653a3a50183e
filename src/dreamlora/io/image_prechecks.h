// Checks and repairs of PNG and JPEG bytes done before stb_image sees them, for inputs on which Debian's
// stb_image (2022-09) misbehaves (found by fuzz/image_fuzz.cpp; docs/FUZZING.md lists the findings).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dreamlora::io {

// What a walk over a JPEG's markers tells before decoding it.
struct JpegStructure {
  bool huffman_tables_valid = true;
  int64_t scan_bytes = 0;     // entropy-coded bytes after the first SOS (with stuffing and RST markers)
  int64_t min_scan_bits = 0;  // one bit per 8x8 block of every component of the SOF0/1/2 frame; 0 if none
};
JpegStructure read_jpeg_structure(std::string_view jpeg);

// What a walk over a PNG's chunks, up to IEND, finds.
struct PngChunks {
  std::optional<size_t> chunk_past_end_at;        // offset of a chunk whose length runs past the file's end
  std::optional<uint32_t> chunk_past_end_length;  // and the length it claims
  std::optional<std::string> without_empty_idat;  // the PNG without its zero-length IDAT chunks; none if none
};
PngChunks read_png_chunks(std::string_view png);

// The fewest bytes a BMP that stb decodes (uncompressed: stb refuses RLE and embedded JPEG/PNG) holds for
// the size its header claims: one unpadded row of width x bits per pixel, times the height; 0 when the
// header is too short to tell.
int64_t bmp_min_pixel_bytes(std::string_view bmp);

}  // namespace dreamlora::io
