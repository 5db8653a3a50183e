// `dreamlora inspect model.safetensors` for single-file checkpoints: family, why, and what each component
// holds.
#include <iomanip>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/convert/single_file.h"

namespace dreamlora::convert {

namespace {

struct ComponentSummary {
  int64_t tensors = 0, params = 0;
  uint64_t bytes = 0;
  std::map<std::string, int64_t> dtypes;
};

std::string mib(uint64_t bytes) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / (1024.0 * 1024.0) << " MiB";
  return os.str();
}

}  // namespace

std::string describe_single_file(const io::safetensors::File& file) {
  if (!file.contains("model.diffusion_model.input_blocks.0.0.weight") &&
      !file.contains("model.diffusion_model.time_embed.0.weight"))
    return "";
  const FamilyDetection d = detect_family(file);
  const auto prefixes = component_prefixes(d.family);
  std::map<std::string, ComponentSummary> parts;
  for (const auto& name : file.names()) {
    std::string component = "other (ignored or unknown)";
    for (const auto& [c, prefix] : prefixes)
      if (name.rfind(prefix, 0) == 0) component = c;
    if (name.rfind("model_ema.", 0) == 0) component = "model_ema (ignored, as diffusers does)";
    const auto& info = file.info(name);
    auto& s = parts[component];
    int64_t n = 1;
    for (auto dim : info.shape) n *= dim;
    s.tensors += 1;
    s.params += n;
    s.bytes += info.end - info.begin;
    s.dtypes[info.dtype] += n;
  }
  std::ostringstream os;
  os << file.path().string() << ": single-file " << to_string(d.family) << " checkpoint (original layout), "
     << file.names().size() << " tensors, " << mib(file.data_bytes()) << "\n";
  os << "  detected:   " << to_string(d.family) << ": " << d.reason << "\n";
  os << "  prediction: " << (d.v_prediction ? "v_prediction" : "epsilon")
     << " (the scheduler config of --model-config decides when given)\n";
  for (const auto& [component, s] : parts) {
    os << "  " << std::left << std::setw(40) << component << std::right << std::setw(6) << s.tensors
       << " tensors " << std::setw(12) << s.params << " params  " << mib(s.bytes);
    for (const auto& [dtype, n] : s.dtypes) os << "  " << dtype;
    os << "\n";
  }
  os << "  load with:  --model " << file.path().string()
     << " --model-config DIR (a diffusers folder of this architecture: its configs and tokenizers)\n";
  return os.str();
}

}  // namespace dreamlora::convert
