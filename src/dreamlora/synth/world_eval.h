// What `dreamlora evaluate` measures on samples of a world model, as numbers from detections:
//   subject_fidelity  share of "a photo of sks toy" samples that show the subject;
//   prompt_fidelity   share of "a photo of sks toy on a green background" samples showing the subject on
//                     a green background (a context its training images never had);
//   language_drift    share of "a photo of a toy" (the class prompt) samples showing the subject: lower
//                     is better, the LoRA should leave the class alone;
//   world_heldout     (optional) share of samples of the held-out combinations whose detected colour and
//                     shape match the prompt;
//   world_heldout_scene  the same samples with the background right too.
// Sampling lives in the CLI; this part scores, lays out the grid and writes the report files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/io/image.h"
#include "dreamlora/synth/world.h"
#include "dreamlora/synth/world_detector.h"

namespace dreamlora::synth {

enum class EvalKind { subject, subject_on_background, class_prompt, world, world_scene };

struct EvalPrompt {
  std::string metric;  // subject_fidelity, prompt_fidelity, language_drift, world_heldout(_scene)
  std::string prompt;
  EvalKind kind = EvalKind::subject;
  Combination expected;  // world(_scene): what the prompt asks for; subject_on_background: .background
};

// The prompts in report order: subject, subject on green, class, then (with_world) the held-out ones for
// world_heldout and again for world_heldout_scene (the same prompts: sample them once).
std::vector<EvalPrompt> evaluation_prompts(const std::string& identifier, const std::string& class_prompt,
                                           bool with_world);

// Whether a sample of this prompt counts as a hit for its metric.
bool counts_as_hit(const EvalPrompt& prompt, const Detection& detection);

struct Interval {
  double low = 0, high = 0;
};

struct Tally {
  int64_t hits = 0, total = 0;
  double share() const { return total > 0 ? double(hits) / double(total) : 0.0; }
  // The Wilson score interval of the share at 95 % confidence: how far the share of these samples may be
  // from the share of unlimited samples (16 samples at 13/16 leave 57-93 %). [0, 1] without samples.
  Interval wilson95() const;
};

// One column of the evaluation: a prompt with its tallies before (no LoRA) and after (with the LoRA).
struct PromptResult {
  EvalPrompt prompt;
  Tally before, after;
};

struct MetricSummary {
  std::string metric;
  Tally before, after;  // summed over the prompts of the metric
};
std::vector<MetricSummary> summarize(const std::vector<PromptResult>& results);

struct EvalSettings {
  std::string model, lora;
  int64_t num_samples = 0, steps = 0;
  double guidance_scale = 0;
  uint64_t seed = 0;
  std::string sampler;
};

// scores.json: the settings, every metric (before/after share, hits, total) and every prompt.
std::string scores_json(const std::vector<PromptResult>& results, const EvalSettings& settings,
                        bool has_lora);
// A short fixed-width table for the terminal (and, in Markdown, for the model card).
std::string scores_table(const std::vector<PromptResult>& results, bool has_lora);
std::string scores_markdown(const std::vector<PromptResult>& results, bool has_lora);

// Images in rows (all the same size) on a white canvas, `gap` pixels apart, each pixel repeated `scale`
// times in both directions.
io::Image compose_grid(const std::vector<std::vector<io::Image>>& rows, int gap, int scale);

// The model card section: the table, the grid image (path relative to the card) and what the rows are.
std::string evaluation_card_section(const std::vector<PromptResult>& results, bool has_lora,
                                    const std::string& grid_relative_path);
// Appends the section to card_path (replacing an earlier "## Evaluation" section); creates the file
// when absent.
void append_evaluation_section(const std::filesystem::path& card_path, const std::string& section);

}  // namespace dreamlora::synth
