#include "dreamlora/train/snapshot.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstring>

#include "dreamlora/io/safetensors.h"
#include "dreamlora/lora/formats.h"
#include "dreamlora/train/host_copy.h"

namespace dreamlora::train {

namespace {

std::string tensor_bytes(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

torch::Tensor bytes_tensor(const std::string& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

}  // namespace

std::vector<torch::Tensor> split_flat(const torch::Tensor& flat,
                                      const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (const auto& shape : shapes) {
    const int64_t n = c10::multiply_integers(shape);
    out.push_back(flat.narrow(0, offset, n).view(shape));
    offset += n;
  }
  return out;
}

std::shared_ptr<const SnapshotLayout> SnapshotLayout::make(const LoRALayers& layers,
                                                           const Optimizer& optimizer) {
  auto layout = std::make_shared<SnapshotLayout>();
  for (const auto& [component, list] : layers)
    for (const auto& [path, linear] : list) {
      for (const auto* w : {&linear->lora->down->weight, &linear->lora->up->weight}) {
        layout->lora_views.push_back(w->detach().view({-1}));  // a view: it follows in-place updates
        layout->lora_shapes.push_back(w->sizes().vec());
      }
      layout->lora_modules.push_back({component, path, linear->lora->options.alpha});
    }
  for (auto& [name, t] : optimizer.state_tensors()) {
    layout->moment_views.push_back(t.detach().view({-1}));
    layout->moment_names.push_back(name);
    layout->moment_shapes.push_back(t.sizes().vec());
  }
  return layout;
}

void capture_rng_states(TrainerState& state, torch::Device device) {
  state.default_rng_state = base64_encode(tensor_bytes(at::detail::getDefaultCPUGenerator().get_state()));
  if (device.is_cuda())
    state.cuda_rng_state =
        base64_encode(tensor_bytes(at::globalContext().defaultGenerator(device).get_state()));
}

void restore_rng_states(const TrainerState& state, torch::Device device) {
  at::Generator default_gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the default generator
  default_gen.set_state(bytes_tensor(base64_decode(state.default_rng_state, "default_rng_state")));
  if (device.is_cuda() && !state.cuda_rng_state.empty()) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(device);
    cuda_gen.set_state(bytes_tensor(base64_decode(state.cuda_rng_state, "cuda_rng_state")));
  }
}

checkpoint::CheckpointContents capture_snapshot(const std::shared_ptr<const SnapshotLayout>& layout,
                                                const Optimizer& optimizer, SnapshotInputs in) {
  // On CUDA both copies are asynchronous (pinned memory, side stream); the writer thread waits for them.
  auto lora_flat = train::copy_to_host_async(torch::cat(layout->lora_views));
  auto moments_flat = train::copy_to_host_async(torch::cat(layout->moment_views));
  capture_rng_states(in.state, in.device);
  in.optimizer_metadata["step"] = std::to_string(optimizer.step_count());
  for (const auto& [key, value] : optimizer.state_metadata()) in.optimizer_metadata[key] = value;
  checkpoint::CheckpointContents c;
  c.prepare = [layout, lora_flat, moments_flat, s = std::move(in.state),
               optimizer_metadata = std::move(in.optimizer_metadata),
               metadata = std::move(in.lora_metadata)](checkpoint::CheckpointContents& c) {
    lora_flat.wait();
    moments_flat.wait();
    lora::LoRAWeights weights;
    const auto lora = split_flat(lora_flat.host, layout->lora_shapes);  // down, up of each module in turn
    for (size_t i = 0; i < layout->lora_modules.size(); ++i) {
      const auto& m = layout->lora_modules[i];
      weights.components[m.component][m.path] = {lora[2 * i], lora[2 * i + 1], m.alpha};
    }
    auto lora_tensors = lora::to_diffusers_tensors(weights, /*bake_alpha_into_up=*/false);
    c.add_tensors("pytorch_lora_weights.safetensors", {lora_tensors.begin(), lora_tensors.end()}, metadata);
    const auto moments = split_flat(moments_flat.host, layout->moment_shapes);
    std::vector<std::pair<std::string, torch::Tensor>> opt;
    for (size_t i = 0; i < moments.size(); ++i) opt.emplace_back(layout->moment_names[i], moments[i]);
    c.add_tensors("optimizer.safetensors", std::move(opt), optimizer_metadata);
    c.add_bytes("trainer_state.json", s.to_json().dump(2) + "\n");
  };
  return c;
}

lora::LoRAWeights copy_lora_weights(const LoRALayers& layers) {
  lora::LoRAWeights w;
  for (const auto& [component, list] : layers) w.components[component] = lora::collect_lora(list);
  for (auto& [component, modules] : w.components)
    for (auto& [path, m] : modules) {
      m.down = m.down.to(torch::kCPU, torch::kFloat32);
      m.up = m.up.to(torch::kCPU, torch::kFloat32);
    }
  return w;
}

void restore_snapshot(const std::filesystem::path& dir, const TrainerState& state,
                      pipeline::ModelBundle& model, bool train_text_encoder, Optimizer& optimizer,
                      LossScaler& scaler, torch::Device device) {
  auto lora_file = lora::load_lora_file(dir / "pytorch_lora_weights.safetensors");
  lora::apply_lora(*model.unet, lora_file.components.at("unet"), dir.string());
  if (train_text_encoder) {
    lora::apply_lora(*model.text.text_encoder, lora_file.components.at("text_encoder"), dir.string());
    if (model.sdxl)
      lora::apply_lora(*model.text.text_encoder_2, lora_file.components.at("text_encoder_2"), dir.string());
  }
  const auto optimizer_file = dir / "optimizer.safetensors";
  auto opt = io::safetensors::File::open(optimizer_file);
  optimizer.load_state(opt.load_all(), opt.metadata(), std::stoll(opt.metadata().at("step")),
                       optimizer_file.string());
  scaler.load_metadata(opt.metadata(), optimizer_file.string());
  restore_rng_states(state, device);
}

}  // namespace dreamlora::train
