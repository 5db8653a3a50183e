#include "dreamlora/synth/world_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/json.h"

namespace dreamlora::synth {

namespace {

constexpr const char* kEvaluationHeading = "## Evaluation";
constexpr const char* kIntervalNote =
    "(a-b%): where the share of unlimited samples lies, with 95 % confidence (Wilson score interval)";

std::string percent(const Tally& t) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%5.1f%%", 100.0 * t.share());
  return buf;
}

std::string fraction(const Tally& t) {
  return std::to_string(t.hits) + "/" + std::to_string(t.total);
}

// "(48-72%)": the 95 % interval in whole percent.
std::string interval(const Tally& t) {
  const auto ci = t.wilson95();
  char buf[32];
  std::snprintf(buf, sizeof(buf), "(%.0f-%.0f%%)", 100.0 * ci.low, 100.0 * ci.high);
  return buf;
}

std::string tally_text(const Tally& t) {
  return percent(t) + " " + fraction(t) + " " + interval(t);
}

io::Json tally_json(const Tally& t) {
  const auto ci = t.wilson95();
  return {{"hits", t.hits}, {"total", t.total}, {"share", t.share()}, {"ci95", {ci.low, ci.high}}};
}

const char* metric_meaning(const std::string& metric) {
  if (metric == "subject_fidelity") return "subject shown (higher is better)";
  if (metric == "prompt_fidelity") return "subject on the asked background (higher is better)";
  if (metric == "language_drift") return "class prompt shows the subject (lower is better)";
  if (metric == "world_heldout") return "held-out colour and shape right";
  return "held-out colour, shape and background right";
}

}  // namespace

Interval Tally::wilson95() const {
  if (total <= 0) return {0.0, 1.0};
  constexpr double z = 1.959963984540054;
  const double n = double(total), p = share(), z2n = z * z / n;
  const double centre = (p + z2n / 2) / (1 + z2n);
  const double half = z * std::sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

std::vector<EvalPrompt> evaluation_prompts(const std::string& identifier, const std::string& class_prompt,
                                           bool with_world) {
  std::vector<EvalPrompt> prompts;
  prompts.push_back({"subject_fidelity", subject_prompt(identifier), EvalKind::subject, {}});
  EvalPrompt on_background{"prompt_fidelity",
                           subject_prompt(identifier, kSubjectPromptBackground),
                           EvalKind::subject_on_background,
                           {}};
  on_background.expected.background = kSubjectPromptBackground;
  prompts.push_back(on_background);
  prompts.push_back({"language_drift", class_prompt, EvalKind::class_prompt, {}});
  if (with_world) {
    for (const auto& c : held_out_combinations())
      prompts.push_back({"world_heldout", world_prompt(c.colour, c.shape, c.background), EvalKind::world, c});
    for (const auto& c : held_out_combinations())
      prompts.push_back(
          {"world_heldout_scene", world_prompt(c.colour, c.shape, c.background), EvalKind::world_scene, c});
  }
  return prompts;
}

bool counts_as_hit(const EvalPrompt& p, const Detection& d) {
  switch (p.kind) {
    case EvalKind::subject:
    case EvalKind::class_prompt:
      return d.has_subject;
    case EvalKind::subject_on_background:
      return d.has_subject && d.background == p.expected.background;
    case EvalKind::world:
      return d.colour == p.expected.colour && d.shape == shape_name(p.expected.shape);
    case EvalKind::world_scene:
      return d.colour == p.expected.colour && d.shape == shape_name(p.expected.shape) &&
             d.background == p.expected.background;
  }
  return false;
}

std::vector<MetricSummary> summarize(const std::vector<PromptResult>& results) {
  std::vector<MetricSummary> out;
  for (const auto& r : results) {
    auto it =
        std::find_if(out.begin(), out.end(), [&](const auto& m) { return m.metric == r.prompt.metric; });
    if (it == out.end()) it = out.insert(out.end(), MetricSummary{r.prompt.metric, {}, {}});
    it->before.hits += r.before.hits, it->before.total += r.before.total;
    it->after.hits += r.after.hits, it->after.total += r.after.total;
  }
  return out;
}

std::string scores_json(const std::vector<PromptResult>& results, const EvalSettings& s, bool has_lora) {
  io::Json j;
  j["model"] = s.model;
  j["lora"] = s.lora;
  j["num_samples"] = s.num_samples;
  j["steps"] = s.steps;
  j["guidance_scale"] = s.guidance_scale;
  j["seed"] = s.seed;
  j["sampler"] = s.sampler;
  j["metrics"] = io::Json::object();
  for (const auto& m : summarize(results)) {
    io::Json entry = {{"before", tally_json(m.before)}};
    if (has_lora) entry["after"] = tally_json(m.after);
    j["metrics"][m.metric] = entry;
  }
  j["prompts"] = io::Json::array();
  for (const auto& r : results) {
    io::Json entry = {
        {"metric", r.prompt.metric}, {"prompt", r.prompt.prompt}, {"before", tally_json(r.before)}};
    if (has_lora) entry["after"] = tally_json(r.after);
    j["prompts"].push_back(entry);
  }
  return j.dump(2) + "\n";
}

std::string scores_table(const std::vector<PromptResult>& results, bool has_lora) {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof(line), "%-18s %-27s%s  %s\n", "metric", "before (no LoRA)",
                has_lora ? "  after (LoRA)                 " : "", "meaning");
  os << line;
  for (const auto& m : summarize(results)) {
    const std::string before = tally_text(m.before);
    const std::string after = has_lora ? "  " + tally_text(m.after) : "";
    std::snprintf(line, sizeof(line), "%-18s %-27s%-*s  %s\n", m.metric.c_str(), before.c_str(),
                  has_lora ? 29 : 0, after.c_str(), metric_meaning(m.metric));
    os << line;
  }
  os << kIntervalNote << "\n";
  return os.str();
}

std::string scores_markdown(const std::vector<PromptResult>& results, bool has_lora) {
  std::ostringstream os;
  os << "| metric | before (no LoRA) |" << (has_lora ? " after (LoRA) |" : "") << " meaning |\n";
  os << "|---|---|" << (has_lora ? "---|" : "") << "---|\n";
  for (const auto& m : summarize(results)) {
    os << "| " << m.metric << " | " << tally_text(m.before) << " |";
    if (has_lora) os << " " << tally_text(m.after) << " |";
    os << " " << metric_meaning(m.metric) << " |\n";
  }
  os << "\n" << kIntervalNote << "\n";
  return os.str();
}

io::Image compose_grid(const std::vector<std::vector<io::Image>>& rows, int gap, int scale) {
  DL_CHECK(!rows.empty() && !rows.front().empty(), "compose_grid: no images");
  DL_CHECK(gap >= 0 && scale >= 1, "compose_grid: gap ", gap, " and scale ", scale, " out of range");
  const int w = rows.front().front().width, h = rows.front().front().height;
  size_t columns = 0;
  for (const auto& row : rows) {
    columns = std::max(columns, row.size());
    for (const auto& img : row)
      DL_CHECK(img.width == w && img.height == h, "compose_grid: image of ", img.width, "x", img.height,
               " among images of ", w, "x", h);
  }
  io::Image grid;
  grid.width = static_cast<int>(columns) * (w * scale + gap) - gap;
  grid.height = static_cast<int>(rows.size()) * (h * scale + gap) - gap;
  grid.rgb.assign(static_cast<size_t>(grid.width) * grid.height * 3, 255);
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const int ox = static_cast<int>(c) * (w * scale + gap), oy = static_cast<int>(r) * (h * scale + gap);
      for (int y = 0; y < h * scale; ++y)
        for (int x = 0; x < w * scale; ++x)
          for (int k = 0; k < 3; ++k)
            grid.rgb[(static_cast<size_t>(oy + y) * grid.width + ox + x) * 3 + k] =
                rows[r][c].rgb[(static_cast<size_t>(y / scale) * w + x / scale) * 3 + k];
    }
  }
  return grid;
}

std::string evaluation_card_section(const std::vector<PromptResult>& results, bool has_lora,
                                    const std::string& grid_relative_path) {
  std::ostringstream os;
  os << kEvaluationHeading << "\n\n";
  os << "`dreamlora evaluate`: samples with fixed seeds, read back by the world's detector "
        "(`src/dreamlora/synth/world_detector.h`).\n\n";
  os << scores_markdown(results, has_lora) << "\n";
  os << "![evaluation grid](" << grid_relative_path << ")\n\n";
  os << "Rows: " << (has_lora ? "before training (no LoRA), after training (with the LoRA)" : "the model")
     << "; columns, the first sample of each prompt:";
  for (const auto& r : results) os << " `" << r.prompt.prompt << "`;";
  os.seekp(-1, std::ios_base::cur);
  os << ".\n";
  return os.str();
}

void append_evaluation_section(const std::filesystem::path& card_path, const std::string& section) {
  std::string card;
  if (std::filesystem::exists(card_path)) {
    std::ifstream in(card_path, std::ios::binary);
    DL_CHECK(in.good(), card_path.string(), ": cannot read the model card");
    std::ostringstream buf;
    buf << in.rdbuf();
    card = buf.str();
  }
  const std::string heading = std::string(kEvaluationHeading) + "\n";
  const auto at = card.rfind(heading, 0) == 0 ? 0 : card.find("\n" + heading);
  if (at != std::string::npos) card.resize(at);
  while (!card.empty() && card.back() == '\n') card.pop_back();
  if (!card.empty()) card += "\n\n";
  io::write_file_durably(card_path, card + section);
}

}  // namespace dreamlora::synth
