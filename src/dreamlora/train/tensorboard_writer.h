// TensorBoard event files written without TensorFlow or protobuf: Debian packages no C++ library for the
// format, and the part a trainer needs is small. A file is a sequence of records
//   uint64 length | uint32 masked CRC32C(length bytes) | data | uint32 masked CRC32C(data)   (little-endian)
// whose data is a serialized tensorflow.Event (tensorboard/compat/proto/event.proto, summary.proto):
//   Event{1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary, 7: SessionLog}
//   Summary{1: repeated Value}  Value{1: string tag, 2: float simple_value, 4: Image image}
//   Image{1: int32 height, 2: int32 width, 3: int32 colorspace, 4: bytes encoded_image_string}
//   SessionLog{1: enum status (START = 1)}
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace dreamlora::train {

namespace tensorboard {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it.
uint32_t crc32c(std::string_view data);
// TFRecord's masking: rotate right by 15 bits, add 0xa282ead8.
uint32_t masked_crc32c(std::string_view data);
// One framed record around `data`.
std::string frame_record(std::string_view data);
// The records' data of a file's bytes, in order. A torn or corrupt record ends the list (a killed writer
// leaves at most one, at the end); `complete_bytes` receives the length of the intact prefix.
std::vector<std::string> read_records(std::string_view bytes, size_t* complete_bytes = nullptr);

// Serialized Event messages.
std::string file_version_event(double wall_time);
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
std::string image_event(double wall_time, int64_t step, const std::string& tag, int height, int width,
                        int colorspace, std::string_view png);
std::string session_start_event(double wall_time, int64_t step);
// The step of a serialized Event (0 when absent), and whether it carries a summary.
struct EventInfo {
  int64_t step = 0;
  bool has_summary = false;
};
EventInfo parse_event(std::string_view event);

}  // namespace tensorboard

// The event files of one run directory (<output-dir>/logs). Each process start opens a new file; on a
// resume from step N it first removes, from the earlier files, summaries of steps after N (logged by a run
// that died before checkpointing them: they are logged again, so every step appears once in the data)
// and then writes a SessionLog START at step N + 1, which makes an already running TensorBoard drop what
// it had read of those steps (its purge_orphaned_data). Every record is flushed as it is written.
class TensorBoardWriter {
 public:
  TensorBoardWriter(const std::filesystem::path& dir, int64_t resume_step);
  void add_scalar(int64_t step, const std::string& tag, double value, double wall_time = -1);
  // rgb: height * width * 3 bytes; stored PNG-encoded.
  void add_image(int64_t step, const std::string& tag, int width, int height, const std::vector<uint8_t>& rgb,
                 double wall_time = -1);
  const std::filesystem::path& path() const { return path_; }

 private:
  void write(const std::string& event);
  std::filesystem::path path_;
  std::ofstream out_;
};

// Removes from an event file the events of steps after `last_step` that carry a summary (and a torn
// tail). Returns how many events were removed; the file is rewritten atomically only when something goes.
int64_t trim_event_file(const std::filesystem::path& file, int64_t last_step);

}  // namespace dreamlora::train
