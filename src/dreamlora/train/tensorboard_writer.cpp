#include "dreamlora/train/tensorboard_writer.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/image.h"

namespace dreamlora::train {

namespace tensorboard {

namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_le(std::string_view in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(in[at + i])) << (8 * i);
  return v;
}

// Protobuf wire format: the few encoders the messages above need.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, int field, int wire_type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type);
}
void put_varint_field(std::string& out, int field, uint64_t v) {
  put_tag(out, field, 0);
  put_varint(out, v);
}
void put_bytes_field(std::string& out, int field, std::string_view bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_double_field(std::string& out, int field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_tag(out, field, 1);
  put_le(out, bits, 8);
}
void put_float_field(std::string& out, int field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_tag(out, field, 5);
  put_le(out, bits, 4);
}

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_double_field(e, 1, wall_time);
  if (step != 0) put_varint_field(e, 2, static_cast<uint64_t>(step));
  return e;
}

std::string summary_event(double wall_time, int64_t step, const std::string& value) {
  std::string summary;
  put_bytes_field(summary, 1, value);
  std::string e = event_header(wall_time, step);
  put_bytes_field(e, 5, summary);
  return e;
}

bool read_varint(std::string_view in, size_t& at, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && at < in.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in[at++]);
    v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static const auto table = make_crc32c_table();
  uint32_t c = 0xffffffffu;
  for (char ch : data) c = table[(c ^ static_cast<uint8_t>(ch)) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string frame_record(std::string_view data) {
  std::string out;
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(out), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

std::vector<std::string> read_records(std::string_view bytes, size_t* complete_bytes) {
  std::vector<std::string> records;
  size_t at = 0;
  while (bytes.size() - at >= 12) {
    const uint64_t length = get_le(bytes, at, 8);
    if (get_le(bytes, at + 8, 4) != masked_crc32c(bytes.substr(at, 8))) break;
    if (length > bytes.size() - at - 16) break;
    const auto data = bytes.substr(at + 12, length);
    if (get_le(bytes, at + 12 + length, 4) != masked_crc32c(data)) break;
    records.emplace_back(data);
    at += 16 + length;
  }
  if (complete_bytes) *complete_bytes = at;
  return records;
}

std::string file_version_event(double wall_time) {
  std::string e = event_header(wall_time, 0);
  put_bytes_field(e, 3, "brain.Event:2");
  return e;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes_field(v, 1, tag);
  put_float_field(v, 2, value);
  return summary_event(wall_time, step, v);
}

std::string image_event(double wall_time, int64_t step, const std::string& tag, int height, int width,
                        int colorspace, std::string_view png) {
  std::string image;
  put_varint_field(image, 1, static_cast<uint64_t>(height));
  put_varint_field(image, 2, static_cast<uint64_t>(width));
  put_varint_field(image, 3, static_cast<uint64_t>(colorspace));
  put_bytes_field(image, 4, png);
  std::string v;
  put_bytes_field(v, 1, tag);
  put_bytes_field(v, 4, image);
  return summary_event(wall_time, step, v);
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string log;
  put_varint_field(log, 1, 1);  // SessionLog.START
  std::string e = event_header(wall_time, step);
  put_bytes_field(e, 7, log);
  return e;
}

EventInfo parse_event(std::string_view event) {
  EventInfo info;
  size_t at = 0;
  while (at < event.size()) {
    uint64_t key = 0, v = 0;
    if (!read_varint(event, at, key)) break;
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (wire == 0) {
      if (!read_varint(event, at, v)) break;
      if (field == 2) info.step = static_cast<int64_t>(v);
    } else if (wire == 1) {
      at += 8;
    } else if (wire == 5) {
      at += 4;
    } else if (wire == 2) {
      if (!read_varint(event, at, v) || v > event.size() - at) break;
      if (field == 5) info.has_summary = true;
      at += v;
    } else {
      break;
    }
  }
  return info;
}

}  // namespace tensorboard

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool is_event_file(const std::filesystem::path& p) {
  return p.filename().string().find("tfevents") != std::string::npos && std::filesystem::is_regular_file(p);
}

// TensorBoard reads a run's files in the lexicographic order of their names: the time, then a sequence
// number (the count of earlier files), so a resume in the same second still sorts after its predecessor.
std::filesystem::path new_event_file_name(const std::filesystem::path& dir, size_t sequence) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  char name[512];
  std::snprintf(name, sizeof(name), "events.out.tfevents.%010lld.%06zu.%s.%d",
                static_cast<long long>(unix_now()), sequence, host, static_cast<int>(::getpid()));
  return dir / name;
}

}  // namespace

int64_t trim_event_file(const std::filesystem::path& file, int64_t last_step) {
  const std::string bytes = io::read_file(file);
  size_t complete = 0;
  const auto records = tensorboard::read_records(bytes, &complete);
  std::string kept;
  int64_t removed = 0;
  for (const auto& r : records) {
    const auto info = tensorboard::parse_event(r);
    if (info.has_summary && info.step > last_step) {
      ++removed;
      continue;
    }
    kept += tensorboard::frame_record(r);
  }
  if (removed > 0 || complete != bytes.size()) io::write_file_durably(file, kept);
  return removed;
}

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& dir, int64_t resume_step) {
  std::filesystem::create_directories(dir);
  size_t earlier = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!is_event_file(entry.path())) continue;
    ++earlier;
    trim_event_file(entry.path(), resume_step);
  }
  path_ = new_event_file_name(dir, earlier);
  out_.open(path_, std::ios::binary | std::ios::trunc);
  DL_CHECK(out_.good(), "cannot create the TensorBoard event file ", path_.string());
  const double now = unix_now();
  write(tensorboard::file_version_event(now));
  if (resume_step > 0) write(tensorboard::session_start_event(now, resume_step + 1));
}

void TensorBoardWriter::write(const std::string& event) {
  out_ << tensorboard::frame_record(event);
  out_.flush();
}

void TensorBoardWriter::add_scalar(int64_t step, const std::string& tag, double value, double wall_time) {
  write(tensorboard::scalar_event(wall_time < 0 ? unix_now() : wall_time, step, tag,
                                  static_cast<float>(value)));
}

void TensorBoardWriter::add_image(int64_t step, const std::string& tag, int width, int height,
                                  const std::vector<uint8_t>& rgb, double wall_time) {
  io::Image image{width, height, rgb};
  write(tensorboard::image_event(wall_time < 0 ? unix_now() : wall_time, step, tag, height, width, 3,
                                 io::encode_png(image)));
}

}  // namespace dreamlora::train
