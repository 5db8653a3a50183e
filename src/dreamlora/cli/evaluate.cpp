// `dreamlora evaluate`: samples a world model with fixed seeds before and after applying a LoRA, reads
// the samples back with the world's detector and reports subject fidelity, prompt fidelity, language
// drift (and, with --world-prompts, the held-out combinations): a table, scores.json and a grid PNG.
#include <torch/torch.h>

#include <iostream>
#include <map>

#include "dreamlora/cli/commands.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/component_runner.h"
#include "dreamlora/pipeline/text_to_image.h"
#include "dreamlora/synth/world_eval.h"

namespace dreamlora::cli {

namespace fs = std::filesystem;

namespace {

struct EvaluateArgs {
  std::string model, model_config, variant, lora, output_dir, out, device = "cpu";
  std::string identifier = "sks", class_prompt = synth::kClassPrompt, sampler = "euler";
  int64_t num_samples = 16, steps = 20;
  double guidance = 7.5, lora_scale = 1.0;
  uint64_t seed = 0;
  bool world_prompts = false, save_samples = false;
};

// Samples every prompt with seeds seed .. seed + n - 1 (a prompt listed again for a second metric is
// scored on the same samples), tallies the hits into before or after, and returns the first sample of
// each prompt (a grid row).
std::vector<io::Image> sample_and_score(pipeline::ModelBundle& model, const EvaluateArgs& a,
                                        std::vector<synth::PromptResult>& results, bool after,
                                        const fs::path& samples_dir) {
  std::vector<io::Image> firsts;
  std::map<std::string, std::vector<io::Image>> sampled;
  for (size_t k = 0; k < results.size(); ++k) {
    auto& r = results[k];
    auto& tally = after ? r.after : r.before;
    if (auto it = sampled.find(r.prompt.prompt); it != sampled.end()) {
      for (const auto& image : it->second) {
        tally.hits += synth::counts_as_hit(r.prompt, synth::detect_world_image(image));
        ++tally.total;
      }
      continue;
    }
    pipeline::SampleOptions o;
    o.prompt = r.prompt.prompt;
    o.steps = a.steps;
    o.guidance = a.guidance;
    o.sampler = a.sampler;
    for (int64_t i = 0; i < a.num_samples; ++i) o.seeds.push_back(a.seed + static_cast<uint64_t>(i));
    pipeline::check_sample_options(model, o);
    std::cerr << (after ? "after " : "before") << " [" << k + 1 << "/" << results.size() << "] " << o.prompt
              << "\n";
    auto images = pipeline::text_to_image(model, o);
    for (size_t i = 0; i < images.size(); ++i) {
      tally.hits += synth::counts_as_hit(r.prompt, synth::detect_world_image(images[i]));
      ++tally.total;
      if (!samples_dir.empty())
        io::save_png(samples_dir / (std::to_string(k) + "-" + std::to_string(i) + ".png"), images[i],
                     pipeline::sample_metadata(o, static_cast<int64_t>(i), after ? a.lora : ""));
    }
    firsts.push_back(images.front());
    sampled[o.prompt] = std::move(images);
  }
  return firsts;
}

int run_evaluate(EvaluateArgs& a) {
  DL_CHECK(a.num_samples >= 1, "--num-samples must be at least 1, got ", a.num_samples);
  if (!a.output_dir.empty()) {
    DL_CHECK(fs::is_directory(a.output_dir), "--output-dir ", a.output_dir, " is not a folder");
    if (a.lora.empty()) a.lora = (fs::path(a.output_dir) / "pytorch_lora_weights.safetensors").string();
  }
  if (!a.lora.empty()) DL_CHECK(fs::is_regular_file(a.lora), "--lora ", a.lora, " does not exist");
  const fs::path out = !a.out.empty()          ? fs::path(a.out)
                       : !a.output_dir.empty() ? fs::path(a.output_dir) / "evaluation"
                                               : fs::path("evaluation");
  const bool has_lora = !a.lora.empty();

  pipeline::LoadOptions load;
  load.variant = a.variant;
  load.model_config = a.model_config;
  load.device = torch::Device(a.device);
  auto model = pipeline::ModelBundle::load(a.model, load);

  std::vector<synth::PromptResult> results;
  for (auto& p : synth::evaluation_prompts(a.identifier, a.class_prompt, a.world_prompts))
    results.push_back({p, {}, {}});
  fs::create_directories(out);
  auto samples_dir = [&](const char* phase) {
    if (!a.save_samples) return fs::path();
    fs::create_directories(out / "samples" / phase);
    return out / "samples" / phase;
  };
  std::vector<std::vector<io::Image>> rows;
  rows.push_back(sample_and_score(model, a, results, false, samples_dir("before")));
  if (has_lora) {
    pipeline::apply_lora_file(model, a.lora, a.lora_scale);
    rows.push_back(sample_and_score(model, a, results, true, samples_dir("after")));
  }

  const int width = rows.front().front().width;
  const auto grid_path = out / "grid.png";
  io::save_png(grid_path, synth::compose_grid(rows, 4, std::max(1, 128 / std::max(1, width))));
  synth::EvalSettings settings{a.model, a.lora, a.num_samples, a.steps, a.guidance, a.seed, a.sampler};
  const auto scores_path = out / "scores.json";
  io::write_file_durably(scores_path, synth::scores_json(results, settings, has_lora));
  std::cout << synth::scores_table(results, has_lora) << "\n";
  std::cout << "grid:   " << grid_path.string() << "  (rows: " << (has_lora ? "before, after" : "the model")
            << "; columns: the prompts)\n";
  std::cout << "scores: " << scores_path.string() << "\n";
  if (!a.output_dir.empty()) {
    const auto card = fs::path(a.output_dir) / "README.md";
    const auto grid_in_card = fs::relative(grid_path, a.output_dir).generic_string();
    synth::append_evaluation_section(card, synth::evaluation_card_section(results, has_lora, grid_in_card));
    std::cout << "model card: " << card.string() << " (section Evaluation)\n";
  }
  return 0;
}

}  // namespace

Runner add_evaluate(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "evaluate",
      "Measure a DreamBooth LoRA on the world model: subject fidelity, prompt fidelity, language drift");
  auto a = std::make_shared<EvaluateArgs>();
  cmd->add_option("--model", a->model, "diffusers pipeline folder (e.g. assets/tiny-world-sd)")->required();
  cmd->add_option("--model-config", a->model_config,
                  "for a single-file --model: diffusers folder with its configs and tokenizers");
  cmd->add_option("--variant", a->variant, "weight file variant, e.g. fp16");
  cmd->add_option("--lora", a->lora,
                  "the trained LoRA (pytorch_lora_weights.safetensors); without it only the model is scored");
  cmd->add_option("--lora-scale", a->lora_scale, "LoRA strength")->capture_default_str();
  cmd->add_option("--output-dir", a->output_dir,
                  "a training run's folder: its LoRA by default; the grid and scores go to "
                  "<output-dir>/evaluation and its README.md gets an Evaluation section");
  cmd->add_option("--out", a->out,
                  "folder for grid.png and scores.json (default: evaluation, or see --output-dir)");
  cmd->add_option("--identifier", a->identifier, "the subject's identifier in the prompts")
      ->capture_default_str();
  cmd->add_option("--class-prompt", a->class_prompt, "the class prompt (language drift)")
      ->capture_default_str();
  cmd->add_option("--num-samples", a->num_samples, "samples per prompt (seeds seed .. seed + N - 1)")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "sampler steps")->capture_default_str();
  cmd->add_option("--guidance-scale,--guidance", a->guidance, "classifier-free guidance scale")
      ->capture_default_str();
  cmd->add_option("--sampler", a->sampler, "euler | euler-a | ddim | dpmpp-2m (+ -karras variants)")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "first seed")->capture_default_str();
  cmd->add_flag("--world-prompts", a->world_prompts,
                "also score the world's held-out combinations (colour, shape, background never trained on)");
  cmd->add_flag("--save-samples", a->save_samples,
                "also write every sample under <out>/samples/{before,after}");
  cmd->add_option("--device", a->device, "cpu or cuda[:N]")->capture_default_str();
  return [a]() -> int { return run_evaluate(*a); };
}

}  // namespace dreamlora::cli
