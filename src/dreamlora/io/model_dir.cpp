#include "dreamlora/io/model_dir.h"

#include <algorithm>

#include "dreamlora/io/safetensors.h"

namespace dreamlora::io {

namespace fs = std::filesystem;

namespace {
bool is_pickle_name(const fs::path& p) {
  auto ext = p.extension().string();
  return ext == ".bin" || ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".pkl";
}

std::string pickle_message(const fs::path& p) {
  return str(p.string(),
             ": pickle checkpoints are not loaded (they can run arbitrary code). Convert the weights to "
             "safetensors, e.g. in Python: `from safetensors.torch import save_file; "
             "save_file(torch.load(path), path_with_.safetensors)`, or re-save the pipeline with "
             "`save_pretrained(dir, safe_serialization=True)`.");
}

// "diffusion_pytorch_model.safetensors" -> "diffusion_pytorch_model.fp16.safetensors"
std::string with_variant(const std::string& file_name, const std::string& variant) {
  if (variant.empty()) return file_name;
  auto dot = file_name.find('.');
  return file_name.substr(0, dot) + "." + variant + file_name.substr(dot);
}
}  // namespace

void refuse_pickle(const fs::path& path) {
  if (is_pickle_name(path)) fail(pickle_message(path));
}

ModelDir ModelDir::open(const fs::path& root) {
  DL_CHECK(fs::is_directory(root), root.string(), ": not a directory (expected a diffusers pipeline folder)");
  auto index_path = root / "model_index.json";
  DL_CHECK(fs::exists(index_path), index_path.string(),
           ": missing; a diffusers pipeline folder has model_index.json at its top");
  Json index = read_json(index_path);
  DL_CHECK(index.is_object(), index_path.string(), ": expected a JSON object");
  ModelDir dir;
  dir.root_ = root;
  dir.pipeline_class_ = index.value("_class_name", "");
  for (auto it = index.begin(); it != index.end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_') continue;
    const Json& v = it.value();
    // Components are ["library", "ClassName"]; [null, null] marks an absent optional component.
    if (!v.is_array() || v.size() != 2 || v[0].is_null() || v[1].is_null()) continue;
    DL_CHECK(v[0].is_string() && v[1].is_string(), index_path.string(), ": component '", it.key(),
             "' must be [library, class], got ", v.dump());
    dir.components_.push_back({it.key(), v[0].get<std::string>(), v[1].get<std::string>()});
  }
  return dir;
}

bool ModelDir::has_component(const std::string& name) const {
  return std::any_of(components_.begin(), components_.end(), [&](const auto& c) { return c.name == name; });
}

const ComponentEntry& ModelDir::component(const std::string& name) const {
  for (const auto& c : components_)
    if (c.name == name) return c;
  fail(str((root_ / "model_index.json").string(), ": pipeline has no component '", name, "'"));
}

bool ModelDir::is_sdxl() const {
  return has_component("text_encoder_2") || pipeline_class_.find("XL") != std::string::npos;
}

std::vector<fs::path> find_weight_files(const fs::path& component_dir, const std::string& variant) {
  DL_CHECK(fs::is_directory(component_dir), component_dir.string(), ": component folder missing");
  std::vector<fs::path> safetensors_files, index_files, pickles;
  for (const auto& entry : fs::directory_iterator(component_dir)) {
    if (!entry.is_regular_file()) continue;
    const auto name = entry.path().filename().string();
    auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".safetensors.index.json"))
      index_files.push_back(entry.path());
    else if (ends_with(".safetensors"))
      safetensors_files.push_back(entry.path());
    else if (is_pickle_name(entry.path()))
      pickles.push_back(entry.path());
  }
  // Prefer the exact diffusers/transformers names, then a sharded index, then a single other file.
  for (const char* base : {"diffusion_pytorch_model.safetensors", "model.safetensors"}) {
    auto p = component_dir / with_variant(base, variant);
    if (fs::exists(p)) return {p};
    auto idx = component_dir / with_variant(std::string(base) + ".index.json", variant);
    if (fs::exists(idx)) {
      Json index = read_json(idx);
      DL_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), idx.string(),
               ": sharded index needs a 'weight_map' object");
      std::vector<fs::path> shards;
      for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
        auto shard = component_dir / it.value().get<std::string>();
        if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
      }
      for (const auto& s : shards) {
        refuse_pickle(s);
        DL_CHECK(fs::exists(s), idx.string(), ": shard ", s.filename().string(), " listed but missing");
      }
      return shards;
    }
  }
  if (variant.empty()) {
    std::vector<fs::path> plain;
    for (const auto& p : safetensors_files)
      if (std::count(p.filename().string().begin(), p.filename().string().end(), '.') == 1)
        plain.push_back(p);
    if (plain.size() == 1) return plain;
  }
  if (!pickles.empty()) fail(pickle_message(pickles.front()));
  std::string found;
  for (const auto& p : safetensors_files) found += " " + p.filename().string();
  fail(str(component_dir.string(), ": no weights found",
           variant.empty() ? std::string() : str(" for variant '", variant, "'"),
           " (looked for diffusion_pytorch_model", variant.empty() ? "" : "." + variant,
           ".safetensors, model", variant.empty() ? "" : "." + variant, ".safetensors or a sharded index)",
           found.empty() ? std::string() : str("; present:", found)));
}

std::map<std::string, torch::Tensor> load_component_weights(const fs::path& component_dir,
                                                            const std::string& variant) {
  std::map<std::string, torch::Tensor> all;
  for (const auto& path : find_weight_files(component_dir, variant)) {
    auto file = safetensors::File::open(path);
    for (const auto& name : file.names()) {
      DL_CHECK(all.count(name) == 0, path.string(), ": tensor '", name, "' also appears in another shard");
      all.emplace(name, file.get(name));
    }
  }
  return all;
}

}  // namespace dreamlora::io
