#include "dreamlora/train/outputs.h"

#include <algorithm>
#include <sstream>

#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

std::map<std::string, std::string> lora_metadata(const TrainConfig& c, bool alpha_baked) {
  std::ostringstream alpha;
  alpha << c.effective_lora_alpha();
  std::map<std::string, std::string> m = {{"format", "pt"},
                                          {"dreamlora.version", checkpoint::dreamlora_version()},
                                          {"dreamlora.rank", std::to_string(c.rank)},
                                          {"dreamlora.alpha", alpha.str()},
                                          {"dreamlora.targets", c.lora_targets},
                                          {"dreamlora.base_model", fs::path(c.model).filename().string()},
                                          {"dreamlora.instance_prompt", c.prompt}};
  m["dreamlora.alpha_baked_into_up"] = alpha_baked ? "true" : "false";
  if (c.train_text_encoder) m["dreamlora.text_encoder_targets"] = c.text_encoder_targets;
  return m;
}

std::string model_card(const TrainConfig& c, bool sdxl, const std::string& sample_image) {
  std::ostringstream md;
  md << "---\nbase_model: " << fs::path(c.model).filename().string() << "\ninstance_prompt: " << c.prompt
     << "\ntags:\n- text-to-image\n- " << (sdxl ? "stable-diffusion-xl" : "stable-diffusion")
     << "\n- lora\n- dreambooth\n- dreamlora\n---\n\n";
  md << "# DreamBooth LoRA trained with dreamlora\n\n";
  md << "Trigger prompt: `" << c.prompt << "`\n\n";
  if (!sample_image.empty()) md << "![sample](" << sample_image << ")\n\n";
  md << "| setting | value |\n|---|---|\n";
  md << "| base model | `" << c.model << "` |\n| rank / alpha | " << c.rank << " / "
     << c.effective_lora_alpha() << " |\n";
  md << "| targets | `" << c.lora_targets << "` |\n| steps | " << c.num_steps
     << " |\n| batch size x accumulation | " << c.batch_size << " x " << c.gradient_accumulation
     << " |\n| learning rate | " << c.lr << " (" << c.scheduler << ") |\n| resolution | " << c.resolution
     << " |\n| prior preservation | " << (c.prior_preservation ? "yes: " + c.class_prompt : std::string("no"))
     << " |\n| seed | " << c.seed << " |\n\n";
  md << "## Use it\n\n";
  md << "diffusers:\n\n```python\npipe.load_lora_weights(\"" << c.output_dir
     << "\", weight_name=\"pytorch_lora_weights.safetensors\")\n```\n\n";
  md << "ComfyUI / AUTOMATIC1111: copy `pytorch_lora_weights_kohya.safetensors` into `models/loras` "
        "(ComfyUI) or `models/Lora` (A1111) and use `<lora:pytorch_lora_weights_kohya:1>` in the prompt.\n\n";
  md << "dreamlora: `dreamlora sample --model " << c.model << " --lora " << c.output_dir
     << "/pytorch_lora_weights.safetensors --prompt \"" << c.prompt << "\"`\n";
  return md.str();
}

std::vector<std::string> final_output_files(const fs::path& out) {
  std::vector<std::string> files;
  for (const char* name : {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors",
                           "README.md", "loss.svg", "metrics.jsonl", "training_config.json"})
    if (fs::is_regular_file(out / name)) files.emplace_back(name);
  std::vector<std::string> images;
  std::error_code ec;
  for (fs::directory_iterator it(out / "validation", ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file()) images.push_back("validation/" + it->path().filename().string());
  std::sort(images.begin(), images.end());
  files.insert(files.end(), images.begin(), images.end());
  return files;
}

void write_final_lora(const fs::path& out, const TrainConfig& c, const pipeline::ModelBundle& model,
                      const lora::LoRAWeights& weights) {
  lora::SaveOptions save;
  save.rank = c.rank;
  save.alpha = c.effective_lora_alpha();
  save.targets = c.lora_target_list();
  save.bake_alpha_into_up = true;
  if (c.save_format == "diffusers" || c.save_format == "both")
    lora::save_diffusers(out / "pytorch_lora_weights.safetensors", weights, save);
  if (c.save_format == "kohya" || c.save_format == "both") {
    lora::KohyaOptions k;
    k.sdxl = model.sdxl;
    if (model.sdxl) k.ldm_layout = lora::UNetLayout::from_unet(*model.unet);
    lora::save_kohya(out / "pytorch_lora_weights_kohya.safetensors", weights, k, save);
  }
}

void write_model_card(const fs::path& out, const TrainConfig& c, bool sdxl) {
  std::string sample;
  if (fs::is_directory(out / "validation")) {
    for (const auto& e : fs::directory_iterator(out / "validation"))
      if (e.path().extension() == ".png" && (sample.empty() || e.path().filename().string() > sample))
        sample = "validation/" + e.path().filename().string();
  }
  io::write_file_durably(out / "README.md", model_card(c, sdxl, sample));
}

}  // namespace dreamlora::train
