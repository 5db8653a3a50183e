// safetensors reader/writer: round trips, byte layout, fixture files, and hostile inputs.
#include "dreamlora/io/safetensors.h"

#include <torch/torch.h>
#include <unistd.h>

#include <fstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "test_util.h"

namespace st = dreamlora::io::safetensors;
using dreamlora::testing::fixtures_dir;
using dreamlora::testing::make_temp_dir;

namespace {

std::string header_bytes(const std::string& json, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + data;
}

std::string parse_error(const std::string& bytes) {
  try {
    st::File::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "hostile.safetensors");
  } catch (const dreamlora::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Safetensors, RoundTripsEveryDtype) {
  auto dir = make_temp_dir("st");
  std::vector<torch::ScalarType> types = {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16,
                                          torch::kInt64,   torch::kInt32,   torch::kInt16,   torch::kInt8,
                                          torch::kUInt8,   torch::kBool};
  st::NamedTensors tensors;
  for (size_t i = 0; i < types.size(); ++i) {
    auto t = (torch::randn({3, 5}) * 50).to(types[i]);
    tensors.emplace_back("t" + std::to_string(i), t);
  }
  tensors.emplace_back("scalar", torch::tensor(7, torch::kInt64).reshape({}));
  tensors.emplace_back("empty", torch::zeros({0, 4}));
  st::save(dir / "a.safetensors", tensors, {{"format", "pt"}, {"note", "x"}});
  auto file = st::File::open(dir / "a.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "x");
  for (const auto& [name, t] : tensors) {
    auto back = file.get(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
}

TEST(Safetensors, HeaderIsPaddedToEightBytesWithSpaces) {
  auto bytes = st::serialize({{"x", torch::ones({3})}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12);
  EXPECT_EQ(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}', true);
}

TEST(Safetensors, RewritingAFixtureFileReproducesItsBytes) {
  REQUIRE_FIXTURES();
  for (const char* rel : {"tiny-sd/lora/pytorch_lora_weights.safetensors",
                          "tiny-sd/lora/pytorch_lora_weights_kohya.safetensors"}) {
    auto path = fixtures_dir() / rel;
    auto file = st::File::open(path);
    st::NamedTensors tensors;
    for (const auto& name : file.names()) tensors.emplace_back(name, file.get(name));
    EXPECT_EQ(st::serialize(tensors, file.metadata()), dreamlora::io::read_file(path)) << rel;
  }
}

TEST(Safetensors, ReadsEveryFixtureTensorWithExpectedShapes) {
  REQUIRE_FIXTURES();
  auto te = st::File::open(fixtures_dir() / "tiny-sd/text_encoder/model.safetensors");
  EXPECT_EQ(te.get("text_model.embeddings.token_embedding.weight").sizes(),
            (std::vector<int64_t>{49408, 32}));
  auto unet = st::File::open(fixtures_dir() / "tiny-sdxl/unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(unet.get("conv_in.weight").sizes(), (std::vector<int64_t>{32, 4, 3, 3}));
  auto ref = st::File::open(fixtures_dir() / "tiny-sd/reference.safetensors");
  EXPECT_EQ(ref.get("unet.timesteps").scalar_type(), torch::kInt64);
  EXPECT_EQ(ref.get("unet.timesteps")[0].item<int64_t>(), 10);
  EXPECT_EQ(ref.get("unet.timesteps")[1].item<int64_t>(), 999);
  // alphas_cumprod of the SD1.5 schedule starts at 1 - 0.00085.
  EXPECT_NEAR(ref.get("ddpm.alphas_cumprod")[0].item<float>(), 1.0f - 0.00085f, 1e-7);
  for (const char* rel : {"tiny-sd/intermediates.safetensors", "tiny-sdxl/reference.safetensors",
                          "tiny-sdxl/vae/diffusion_pytorch_model.safetensors"}) {
    auto f = st::File::open(fixtures_dir() / rel);
    for (const auto& name : f.names()) {
      auto t = f.get(name);
      EXPECT_EQ(t.numel(), c10::multiply_integers(f.info(name).shape)) << name;
    }
  }
}

TEST(Safetensors, RejectsHostileFiles) {
  EXPECT_NE(parse_error("abc").find("not a safetensors file"), std::string::npos);
  std::string huge(8, '\xff');
  EXPECT_NE(parse_error(huge + "{}").find("exceeds the limit"), std::string::npos);
  std::string big = header_bytes("{}");
  big[0] = 100;  // claims 100 header bytes, file has 2
  EXPECT_NE(parse_error(big).find("larger than the file"), std::string::npos);
  EXPECT_NE(parse_error(header_bytes("{not json")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", "1234"))
                .find("unknown dtype 'F12'"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "1234"))
                .find("need 8"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "12"))
                .find("out of bounds"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                                     "123456"))
                .find("overlaps or has a gap"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "12345678"))
                .find("overlaps or has a gap"),
            std::string::npos);
  EXPECT_NE(
      parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "1234extra"))
          .find("trailing data"),
      std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234"))
                .find("invalid dimension"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", "1234")).find("data_offsets"),
            std::string::npos);
  EXPECT_NE(parse_error(header_bytes(R"([1,2])")).find("JSON object"), std::string::npos);
}

TEST(Safetensors, OpenNamesTheMissingFile) {
  try {
    st::File::open("/nonexistent/x.safetensors");
    FAIL() << "expected an error";
  } catch (const dreamlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, SaveLeavesNoTempFileAndReplacesAtomically) {
  auto dir = make_temp_dir("st-durable");
  st::save(dir / "w.safetensors", st::NamedTensors{{"a", torch::ones({2})}});
  st::save(dir / "w.safetensors", st::NamedTensors{{"a", torch::zeros({2})}});
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) (void)e, ++files;
  EXPECT_EQ(files, 1);
  EXPECT_EQ(st::File::open(dir / "w.safetensors").get("a").sum().item<float>(), 0.0f);
}

namespace {
// Resident pages of this process, in bytes (/proc/self/statm's second field).
int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}
}  // namespace

TEST(Safetensors, ReleasingACopiedTensorDropsItsMappedPagesAndNothingElse) {
  auto dir = make_temp_dir("st-release");
  const int64_t n = 16 * 1024 * 1024;  // 64 MiB of fp32
  st::save(dir / "big.safetensors",
           st::NamedTensors{{"a", torch::arange(n, torch::kFloat32)}, {"b", torch::ones({1000})}});
  auto file = st::File::open(dir / "big.safetensors");
  auto copy = torch::empty({n});
  copy.fill_(0);
  const auto before = resident_bytes();
  copy.copy_(file.get("a"));  // touches every mapped page of "a"
  const auto touched = resident_bytes();
  EXPECT_GT(touched - before, n * 4 / 2);
  st::release_mapped_pages(file.get("a"));
  EXPECT_LT(resident_bytes(), touched - n * 4 / 2);
  // The pages come back from the file when read again; other tensors and copies are untouched.
  EXPECT_TRUE(torch::equal(file.get("a"), copy));
  EXPECT_EQ(file.get("b").sum().item<float>(), 1000.0f);
  st::release_mapped_pages(copy);  // not a mapping: a no-op
  EXPECT_EQ(copy[n - 1].item<float>(), static_cast<float>(n - 1));
  std::filesystem::remove_all(dir);
}
