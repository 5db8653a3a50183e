#include "dreamlora/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::io::safetensors {

namespace {

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
  size_t bytes;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kFloat64, 8},   {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},     {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& e : kDtypes)
    if (name == e.name) return &e;
  return nullptr;
}

// Position of each dtype in the safetensors crate's Dtype enum, which orders tensors in its files.
int dtype_rank(torch::ScalarType t) {
  switch (t) {
    case torch::kBool:
      return 0;
    case torch::kUInt8:
      return 1;
    case torch::kInt8:
      return 2;
    case torch::kInt16:
      return 5;
    case torch::kFloat16:
      return 7;
    case torch::kBFloat16:
      return 8;
    case torch::kInt32:
      return 9;
    case torch::kFloat32:
      return 11;
    case torch::kFloat64:
      return 12;
    case torch::kInt64:
      return 13;
    default:
      return -1;
  }
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

std::string dtype_name(torch::ScalarType type) {
  for (const auto& e : kDtypes)
    if (e.type == type) return e.name;
  fail(str("safetensors: dtype ", c10::toString(type), " cannot be stored"));
}

torch::ScalarType scalar_type(const std::string& name) {
  const DtypeEntry* e = find_dtype(name);
  DL_CHECK(e != nullptr, "safetensors: unknown dtype '", name, "'");
  return e->type;
}

namespace {
// The live mappings, so release_mapped_pages can tell a view of a file from any other tensor.
std::mutex mappings_mutex;
std::map<uintptr_t, size_t> live_mappings;  // start -> size
}  // namespace

struct File::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  void map(int fd) {
    addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) return;
    std::lock_guard<std::mutex> lock(mappings_mutex);
    live_mappings[reinterpret_cast<uintptr_t>(addr)] = size;
  }
  ~Mapping() {
    if (addr == nullptr || addr == MAP_FAILED) return;
    {
      std::lock_guard<std::mutex> lock(mappings_mutex);
      live_mappings.erase(reinterpret_cast<uintptr_t>(addr));
    }
    munmap(addr, size);
  }
};

void release_mapped_pages(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || t.numel() == 0) return;
  int64_t last = 0;  // offset of the view's last element, in elements
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) return;
    last += (t.size(d) - 1) * t.stride(d);
  }
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto end = begin + static_cast<uintptr_t>((last + 1) * static_cast<int64_t>(t.element_size()));
  std::lock_guard<std::mutex> lock(mappings_mutex);
  auto it = live_mappings.upper_bound(begin);
  if (it == live_mappings.begin()) return;
  --it;
  const uintptr_t map_begin = it->first, map_end = it->first + it->second;
  if (begin < map_begin || end > map_end) return;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t from = begin & ~(page - 1);
  const uintptr_t to = std::min(map_end, (end + page - 1) & ~(page - 1));
  madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
}

File File::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DL_CHECK(fd >= 0, path.string(), ": cannot open safetensors file: ", std::strerror(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(str(path.string(), ": cannot stat: ", std::strerror(err)));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->map(fd);
    if (mapping->addr == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(str(path.string(), ": cannot mmap: ", std::strerror(err)));
    }
  }
  ::close(fd);
  File file = parse(static_cast<const uint8_t*>(mapping->addr), mapping->size, path.string());
  file.path_ = path;
  file.mapping_ = std::move(mapping);
  return file;
}

File File::parse(const uint8_t* data, size_t size, const std::string& label) {
  DL_CHECK(size >= 8, label, ": not a safetensors file (", size,
           " bytes, need at least the 8-byte header length)");
  const uint64_t header_len = read_u64_le(data);
  DL_CHECK(header_len <= kMaxHeaderBytes, label, ": header length ", header_len, " exceeds the limit of ",
           kMaxHeaderBytes, " bytes");
  DL_CHECK(header_len <= size - 8, label, ": header length ", header_len, " is larger than the file (", size,
           " bytes)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_len);
  } catch (const std::exception& e) {
    fail(str(label, ": header is not valid JSON: ", e.what()));
  }
  DL_CHECK(header.is_object(), label, ": header must be a JSON object");

  File file;
  file.path_ = label;
  file.data_ = data + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<const TensorInfo*> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& entry = it.value();
    if (name == "__metadata__") {
      DL_CHECK(entry.is_object(), label, ": __metadata__ must be an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        DL_CHECK(m.value().is_string(), label, ": __metadata__ value for '", m.key(), "' is not a string");
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DL_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                 entry.contains("data_offsets"),
             label, ": tensor '", name, "' needs dtype, shape and data_offsets");
    TensorInfo info;
    info.name = name;
    DL_CHECK(entry["dtype"].is_string(), label, ": tensor '", name, "' dtype is not a string");
    info.dtype = entry["dtype"].get<std::string>();
    const DtypeEntry* dt = find_dtype(info.dtype);
    DL_CHECK(dt != nullptr, label, ": tensor '", name, "' has unknown dtype '", info.dtype, "'");
    DL_CHECK(entry["shape"].is_array(), label, ": tensor '", name, "' shape is not a list");
    uint64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      DL_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), label,
               ": tensor '", name, "' has an invalid dimension ", d.dump());
      uint64_t dim = d.get<uint64_t>();
      DL_CHECK(dim == 0 || numel <= UINT64_MAX / dim / 8, label, ": tensor '", name, "' shape overflows");
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offs = entry["data_offsets"];
    DL_CHECK(
        offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() && offs[1].is_number_unsigned(),
        label, ": tensor '", name, "' data_offsets must be two non-negative integers");
    info.begin = offs[0].get<uint64_t>();
    info.end = offs[1].get<uint64_t>();
    DL_CHECK(info.begin <= info.end && info.end <= data_size, label, ": tensor '", name, "' data_offsets [",
             info.begin, ", ", info.end, "] out of bounds of the ", data_size, "-byte data buffer");
    DL_CHECK(info.end - info.begin == numel * dt->bytes, label, ": tensor '", name, "' has ",
             info.end - info.begin, " bytes but shape and dtype ", info.dtype, " need ", numel * dt->bytes);
    auto [pos, inserted] = file.tensors_.emplace(name, std::move(info));
    DL_CHECK(inserted, label, ": tensor '", name, "' appears twice");
    by_offset.push_back(&pos->second);
  }
  // The data buffer must be exactly the tensors laid end to end: no gaps, overlaps or trailing bytes.
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  for (const TensorInfo* t : by_offset) {
    DL_CHECK(t->begin == cursor, label, ": tensor '", t->name, "' starts at byte ", t->begin,
             " but the previous tensor ends at ", cursor, " (data overlaps or has a gap)");
    cursor = t->end;
  }
  DL_CHECK(cursor == data_size, label, ": ", data_size - cursor,
           " bytes of trailing data after the last tensor");
  return file;
}

bool File::contains(const std::string& name) const {
  return tensors_.count(name) > 0;
}

std::vector<std::string> File::names() const {
  std::vector<const TensorInfo*> infos;
  for (const auto& [name, info] : tensors_) infos.push_back(&info);
  std::sort(infos.begin(), infos.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  std::vector<std::string> out;
  for (auto* i : infos) out.push_back(i->name);
  return out;
}

const TensorInfo& File::info(const std::string& name) const {
  auto it = tensors_.find(name);
  DL_CHECK(it != tensors_.end(), path_.string(), ": no tensor named '", name, "'");
  return it->second;
}

torch::Tensor File::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  auto type = scalar_type(ti.dtype);
  auto options = torch::TensorOptions().dtype(type);
  // Data after an arbitrary-length header may be misaligned for the dtype; copy in that case.
  const uint8_t* ptr = data_ + ti.begin;
  size_t elem = torch::elementSize(type);
  if (reinterpret_cast<uintptr_t>(ptr) % elem != 0 || ti.end == ti.begin) {
    auto t = torch::empty(ti.shape, options);
    if (ti.end > ti.begin) std::memcpy(t.data_ptr(), ptr, ti.end - ti.begin);
    return t;
  }
  auto keep = mapping_;
  return torch::from_blob(const_cast<uint8_t*>(ptr), ti.shape, [keep](void*) {}, options);
}

std::map<std::string, torch::Tensor> File::load_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, info] : tensors_) out.emplace(name, get(name));
  return out;
}

uint64_t File::data_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, info] : tensors_) total += info.end - info.begin;
  return total;
}

std::string serialize(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  // Byte-compatible with the reference writer: tensors sorted by dtype rank (descending, the Rust
  // crate's enum order) then name, header keys in data order, __metadata__ first.
  NamedTensors sorted = tensors;
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    int ra = dtype_rank(a.second.scalar_type()), rb = dtype_rank(b.second.scalar_type());
    return ra != rb ? ra > rb : a.first < b.first;
  });
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : sorted) {
    DL_CHECK(!header.contains(name), "safetensors: tensor name '", name, "' given twice");
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(t);
  }
  std::string json = header.dump();
  // Pad the header with spaces so the data buffer starts 8-byte aligned.
  while ((json.size() % 8) != 0) json.push_back(' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  for (const auto& t : contiguous)
    out.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size());
  return out;
}

void save(const std::filesystem::path& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata) {
  write_file_durably(path, serialize(tensors, metadata));
}

void save(const std::filesystem::path& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  save(path, NamedTensors(tensors.begin(), tensors.end()), metadata);
}

void File::release_pages() const {
  if (mapping_ && mapping_->addr != nullptr && mapping_->addr != MAP_FAILED)
    madvise(mapping_->addr, mapping_->size, MADV_DONTNEED);
}

}  // namespace dreamlora::io::safetensors
