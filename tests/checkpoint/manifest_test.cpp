// MANIFEST.json round trip, hostile manifests, checksums and verify_checkpoint's verdicts.
#include "dreamlora/checkpoint/manifest.h"

#include <gtest/gtest.h>

#include "checkpoint/checkpoint_test_helpers.h"
#include "dreamlora/common/error.h"
#include "test_util.h"

namespace dreamlora::checkpoint {
namespace {

namespace fs = std::filesystem;
using testing::write_text;

TEST(Manifest, Xxh3HexIsTheCanonicalSixteenDigitForm) {
  EXPECT_EQ(xxh3_hex(""), "2d06800538d394c2");     // XXH3_64bits of the empty input
  EXPECT_EQ(xxh3_hex("abc"), "78af5f94892f3950");  // as printed by `xxhsum -H3` 0.8.1
  EXPECT_NE(xxh3_hex("abc"), xxh3_hex("abd"));
}

TEST(Manifest, FileChecksumEqualsInMemoryChecksum) {
  auto dir = dreamlora::testing::make_temp_dir("manifest-hash");
  std::string bytes(3 * 1024 * 1024 + 17, 'x');
  bytes[12345] = 'y';
  write_text(dir / "f", bytes);
  uint64_t size = 0;
  EXPECT_EQ(xxh3_file_hex(dir / "f", &size), xxh3_hex(bytes));
  EXPECT_EQ(size, bytes.size());
  fs::remove_all(dir);
}

TEST(Manifest, JsonRoundTripKeepsEveryField) {
  Manifest m;
  m.step = 1200;
  m.created_at = "2026-11-27T23:10:05Z";
  m.dreamlora_version = "0.1.0";
  m.files = {{"a.safetensors", 10, xxh3_hex("a")}, {"trainer_state.json", 3, xxh3_hex("b")}};
  Manifest back = Manifest::parse(m.to_json(), "test");
  EXPECT_EQ(back.format_version, kFormatVersion);
  EXPECT_EQ(back.step, 1200);
  EXPECT_EQ(back.created_at, m.created_at);
  EXPECT_EQ(back.dreamlora_version, "0.1.0");
  ASSERT_EQ(back.files.size(), 2u);
  EXPECT_EQ(back.files[1].name, "trainer_state.json");
  EXPECT_EQ(back.files[1].size, 3u);
  EXPECT_EQ(back.files[1].xxh3_64, xxh3_hex("b"));
  EXPECT_EQ(back.total_bytes(), 13u);
}

TEST(Manifest, ParseRejectsHostileOrMalformedManifests) {
  auto rejects = [](const std::string& text, const std::string& expected_part) {
    try {
      Manifest::parse(text, "MANIFEST.json");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected_part), std::string::npos) << e.what();
    }
  };
  const std::string h = xxh3_hex("x");
  rejects("{", "not valid JSON");
  rejects(R"({"step": 1, "files": []})", "format_version");
  rejects(R"({"format_version": 99, "step": 1, "files": []})", "format_version 99");
  rejects(R"({"format_version": 1, "step": -5, "files": []})", "negative");
  rejects(R"({"format_version": 1, "step": 1, "files": [{"name": "../evil", "size": 1, "xxh3_64": ")" + h +
              R"("}]})",
          "not a plain file name");
  rejects(R"({"format_version": 1, "step": 1, "files": [{"name": "MANIFEST.json", "size": 1, "xxh3_64": ")" +
              h + R"("}]})",
          "not a plain file name");
  rejects(R"({"format_version": 1, "step": 1, "files": [{"name": "a", "size": 1, "xxh3_64": "XYZ"}]})",
          "16 lowercase hex");
  rejects(
      R"({"format_version": 1, "step": 1, "files": [{"name": "a", "size": -1, "xxh3_64": ")" + h + R"("}]})",
      "files[0]");
  rejects(R"({"format_version": 1, "step": 1, "files": [{"name": "a", "size": 1, "xxh3_64": ")" + h +
              R"("}, {"name": "a", "size": 1, "xxh3_64": ")" + h + R"("}]})",
          "listed twice");
}

TEST(Manifest, CheckpointDirNamesAreStrict) {
  EXPECT_EQ(parse_checkpoint_dir_name("checkpoint-0"), 0);
  EXPECT_EQ(parse_checkpoint_dir_name("checkpoint-1500"), 1500);
  EXPECT_FALSE(parse_checkpoint_dir_name("checkpoint-"));
  EXPECT_FALSE(parse_checkpoint_dir_name("checkpoint-abc"));
  EXPECT_FALSE(parse_checkpoint_dir_name("checkpoint-007"));
  EXPECT_FALSE(parse_checkpoint_dir_name("checkpoint-final-backup"));
  EXPECT_FALSE(parse_checkpoint_dir_name("checkpoint--1"));
  EXPECT_FALSE(parse_checkpoint_dir_name(".checkpoint-5.tmp-12"));
  EXPECT_FALSE(parse_checkpoint_dir_name("my-notes"));
  EXPECT_EQ(checkpoint_dir_name(42), "checkpoint-42");
}

// A hand-built checkpoint directory: files a, b and a manifest listing them.
fs::path make_manual_checkpoint(const fs::path& root, int64_t step) {
  fs::path dir = root / checkpoint_dir_name(step);
  fs::create_directories(dir);
  write_text(dir / "a.bin", "hello");
  write_text(dir / "b.json", "{}");
  Manifest m;
  m.step = step;
  m.files = {{"a.bin", 5, xxh3_hex("hello")}, {"b.json", 2, xxh3_hex("{}")}};
  write_text(dir / kManifestName, m.to_json());
  return dir;
}

TEST(Verify, AcceptsIntactCheckpointAndIgnoresUnlistedFiles) {
  auto root = dreamlora::testing::make_temp_dir("verify-ok");
  auto dir = make_manual_checkpoint(root, 7);
  write_text(dir / "notes.txt", "unlisted, cannot change what a resume loads");
  Verification v = verify_checkpoint(dir);
  EXPECT_TRUE(v.ok) << v.reason;
  EXPECT_EQ(v.bytes, 7u);
  ASSERT_TRUE(v.manifest);
  EXPECT_EQ(v.manifest->step, 7);
  fs::remove_all(root);
}

TEST(Verify, NamesTheDefectOfEachBrokenCheckpoint) {
  auto root = dreamlora::testing::make_temp_dir("verify-bad");
  auto expect_invalid = [&](const std::function<void(const fs::path&)>& damage, const std::string& expected) {
    fs::remove_all(root / "checkpoint-7");
    auto dir = make_manual_checkpoint(root, 7);
    damage(dir);
    Verification v = verify_checkpoint(dir);
    EXPECT_FALSE(v.ok) << expected;
    EXPECT_NE(v.reason.find(expected), std::string::npos) << "reason: " << v.reason;
  };
  expect_invalid([](const fs::path& d) { fs::remove(d / kManifestName); }, "MANIFEST.json missing");
  expect_invalid([](const fs::path& d) { write_text(d / kManifestName, "{\"format"); }, "not valid JSON");
  expect_invalid([](const fs::path& d) { write_text(d / "a.bin", "hellp"); }, "a.bin: checksum");
  expect_invalid([](const fs::path& d) { write_text(d / "a.bin", "hel"); }, "a.bin: size 3 bytes");
  expect_invalid([](const fs::path& d) { write_text(d / "a.bin", "hel"); }, "truncated");
  expect_invalid([](const fs::path& d) { fs::remove(d / "b.json"); },
                 "b.json: listed in MANIFEST.json but missing");
  expect_invalid([](const fs::path& d) { fs::rename(d, d.parent_path() / "checkpoint-8"); },
                 "not a directory");
  // A directory renamed to another step must not pass for that step.
  fs::remove_all(root / "checkpoint-9");
  auto dir = make_manual_checkpoint(root, 7);
  fs::rename(dir, root / "checkpoint-9");
  Verification v = verify_checkpoint(root / "checkpoint-9");
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.reason.find("says step 7"), std::string::npos) << v.reason;
  fs::remove_all(root);
}

}  // namespace
}  // namespace dreamlora::checkpoint
