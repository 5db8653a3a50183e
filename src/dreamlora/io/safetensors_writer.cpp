#include "dreamlora/io/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::io::safetensors {

namespace {

void write_all(int fd, const char* data, size_t size, const std::filesystem::path& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    DL_CHECK(n > 0, path.string(), ": write failed: ", std::strerror(errno));
    data += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

void save_streamed(const std::filesystem::path& path, const NamedTensors& tensors) {
  std::vector<const std::pair<std::string, torch::Tensor>*> order;
  for (const auto& named : tensors) order.push_back(&named);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
  nlohmann::ordered_json header;
  uint64_t offset = 0;
  for (const auto* named : order) {
    DL_CHECK(!header.contains(named->first), "safetensors: tensor name '", named->first, "' given twice");
    const auto& t = named->second;
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[named->first] = {{"dtype", dtype_name(t.scalar_type())},
                            {"shape", t.sizes().vec()},
                            {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  while ((json.size() % 8) != 0) json.push_back(' ');
  std::filesystem::create_directories(path.parent_path());
  const auto tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DL_CHECK(fd >= 0, tmp, ": cannot create: ", std::strerror(errno));
  try {
    char len[8];
    const uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    write_all(fd, len, 8, tmp);
    write_all(fd, json.data(), json.size(), tmp);
    for (const auto* named : order) {
      torch::Tensor t = named->second.detach().to(torch::kCPU).contiguous();
      write_all(fd, static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size(),
                tmp);
    }
    DL_CHECK(::fsync(fd) == 0, tmp, ": fsync failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(tmp);
    throw;
  }
  ::close(fd);
  std::filesystem::rename(tmp, path);
  fsync_path(path.parent_path());
}

}  // namespace dreamlora::io::safetensors
