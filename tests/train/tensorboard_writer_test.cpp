#include "dreamlora/train/tensorboard_writer.h"

#include <gtest/gtest.h>

#include <set>

#include "dreamlora/io/durable_file.h"
#include "dreamlora/train/metrics.h"
#include "test_util.h"

namespace dreamlora::train {
namespace {

using io::Image;
using io::read_file;
using io::write_file_durably;

namespace fs = std::filesystem;
using namespace tensorboard;
using ::dreamlora::testing::make_temp_dir;

// RFC 3720 (iSCSI) appendix B.4 test vectors, and the classic check value of "123456789".
TEST(TensorBoardCrc32c, MatchesPublishedVectors) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i)
    ascending.push_back(static_cast<char>(i)), descending.push_back(static_cast<char>(31 - i));
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c(descending), 0x113FDB5Cu);
  EXPECT_EQ(crc32c(""), 0u);
}

TEST(TensorBoardCrc32c, MaskRotatesAndAddsTheTfRecordDelta) {
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789"), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoardRecords, FrameIsLengthCrcDataCrcLittleEndian) {
  const std::string framed = frame_record("abc");
  ASSERT_EQ(framed.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(framed.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
  const uint32_t len_crc = masked_crc32c(framed.substr(0, 8));
  const uint32_t data_crc = masked_crc32c("abc");
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<uint8_t>(framed[8 + i]), (len_crc >> (8 * i)) & 0xff);
    EXPECT_EQ(static_cast<uint8_t>(framed[15 + i]), (data_crc >> (8 * i)) & 0xff);
  }
  EXPECT_EQ(framed.substr(12, 3), "abc");
}

TEST(TensorBoardRecords, ReadBackStopsAtATornOrCorruptRecord) {
  const std::string a = frame_record("first"), b = frame_record("second");
  size_t complete = 0;
  EXPECT_EQ(read_records(a + b, &complete), (std::vector<std::string>{"first", "second"}));
  EXPECT_EQ(complete, a.size() + b.size());
  const std::string torn = a + b.substr(0, b.size() - 3);
  EXPECT_EQ(read_records(torn, &complete), std::vector<std::string>{"first"});
  EXPECT_EQ(complete, a.size());
  std::string corrupt = a + b;
  corrupt[a.size() + 13] ^= 1;  // a data byte of the second record
  EXPECT_EQ(read_records(corrupt).size(), 1u);
}

TEST(TensorBoardEvents, StepAndSummaryAreParsedBack) {
  EXPECT_EQ(parse_event(scalar_event(1.5, 42, "train/loss", 0.25f)).step, 42);
  EXPECT_TRUE(parse_event(scalar_event(1.5, 42, "train/loss", 0.25f)).has_summary);
  EXPECT_TRUE(parse_event(image_event(1.5, 7, "validation/0", 2, 2, 3, "png")).has_summary);
  EXPECT_FALSE(parse_event(file_version_event(1.5)).has_summary);
  EXPECT_EQ(parse_event(session_start_event(1.5, 300000000000)).step, 300000000000);
  EXPECT_FALSE(parse_event(session_start_event(1.5, 3)).has_summary);
}

TEST(TensorBoardEvents, ScalarEventHasTheProtobufBytesOfEventSummaryValue) {
  // Event{wall_time: 1.0, step: 3, summary {value {tag: "x" simple_value: 1.0}}}, serialized by hand from
  // tensorboard/compat/proto/event.proto and summary.proto.
  const std::string expected(
      "\x09\x00\x00\x00\x00\x00\x00\xf0\x3f"  // 1: double 1.0
      "\x10\x03"                              // 2: step 3
      "\x2a\x0a"                              // 5: summary, 10 bytes
      "\x0a\x08"                              // Summary.1: value, 8 bytes
      "\x0a\x01x"                             // Value.1: tag "x"
      "\x15\x00\x00\x80\x3f",                 // Value.2: float 1.0
      23);
  EXPECT_EQ(scalar_event(1.0, 3, "x", 1.0f), expected);
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find("tfevents") != std::string::npos) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::multiset<int64_t> summary_steps(const std::vector<fs::path>& files) {
  std::multiset<int64_t> steps;
  for (const auto& f : files)
    for (const auto& r : read_records(io::read_file(f))) {
      auto info = parse_event(r);
      if (info.has_summary) steps.insert(info.step);
    }
  return steps;
}

TEST(TensorBoardWriter, ResumeTrimsOrphanedStepsAndStartsASessionInANewLaterFile) {
  const fs::path dir = make_temp_dir("tb_resume") / "logs";
  {
    TensorBoardWriter first(dir, 0);
    for (int step = 1; step <= 5; ++step) first.add_scalar(step, "train/loss", 1.0 / step);
  }
  // The run checkpointed step 3, then died: steps 4 and 5 are logged again by the resumed run.
  {
    TensorBoardWriter second(dir, 3);
    for (int step = 4; step <= 6; ++step) second.add_scalar(step, "train/loss", 1.0 / step);
  }
  const auto files = event_files(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(summary_steps(files), (std::multiset<int64_t>{1, 2, 3, 4, 5, 6}));
  // The second file (later in name order) opens with the file version, then SessionLog START at step 4.
  const auto records = read_records(io::read_file(files[1]));
  ASSERT_GE(records.size(), 2u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_EQ(parse_event(records[1]).step, 4);
  EXPECT_FALSE(parse_event(records[1]).has_summary);
}

TEST(TensorBoardWriter, TrimDropsATornTail) {
  const fs::path dir = make_temp_dir("tb_torn");
  const fs::path file = dir / "events.out.tfevents.1";
  const std::string whole =
      frame_record(scalar_event(1, 1, "a", 1)) + frame_record(scalar_event(1, 2, "a", 2));
  io::write_file_durably(file, whole.substr(0, whole.size() - 5));
  EXPECT_EQ(trim_event_file(file, 10), 0);
  EXPECT_EQ(read_records(io::read_file(file)).size(), 1u);
  EXPECT_EQ(io::read_file(file).size(), frame_record(scalar_event(1, 1, "a", 1)).size());
}

TEST(ReportTo, EachChoiceWritesOnlyItsLogs) {
  for (const std::string choice : {"jsonl", "tensorboard", "all", "none"}) {
    const fs::path dir = make_temp_dir("report_to");
    {
      MetricsLog log(dir, 0, choice);
      log.record(1, 0.5, 1e-4, 100.0, 65536.0);
      log.record(2, 0.4, 1e-4, 101.5, 65536.0);
      log.record_images(2, {io::Image{2, 1, {255, 0, 0, 0, 255, 0}}});
    }
    const bool jsonl = choice == "jsonl" || choice == "all", tb = choice == "tensorboard" || choice == "all";
    EXPECT_EQ(fs::exists(dir / "metrics.jsonl"), jsonl) << choice;
    EXPECT_EQ(fs::exists(dir / "logs"), tb) << choice;
    if (!tb) continue;
    const auto files = event_files(dir / "logs");
    ASSERT_EQ(files.size(), 1u);
    // file version, then loss, lr, loss scale at step 1; loss, lr, step time, loss scale at step 2; one image
    const auto records = read_records(io::read_file(files[0]));
    EXPECT_EQ(records.size(), 1u + 3 + 4 + 1) << choice;
    EXPECT_NE(records[6].find("train/step_time_s"), std::string::npos);
    EXPECT_NE(records.back().find("validation/0"), std::string::npos);
    EXPECT_NE(records.back().find("\x89PNG"), std::string::npos);
  }
}

}  // namespace
}  // namespace dreamlora::train
