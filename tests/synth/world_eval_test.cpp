#include "dreamlora/synth/world_eval.h"

#include <gtest/gtest.h>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/json.h"
#include "test_util.h"

namespace dreamlora::synth {
namespace {

Detection detection(bool subject, const std::string& background = "white", const std::string& colour = "",
                    const std::string& shape = "") {
  Detection d;
  d.has_subject = subject, d.background = background, d.colour = colour, d.shape = shape;
  return d;
}

TEST(WorldEval, PromptsComeInReportOrderWithTheWorldsGrammar) {
  auto p = evaluation_prompts("sks", kClassPrompt, false);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].prompt, "a photo of sks toy");
  EXPECT_EQ(p[1].prompt, "a photo of sks toy on a green background");
  EXPECT_EQ(p[2].prompt, "a photo of a toy");
  auto with_world = evaluation_prompts("sks", kClassPrompt, true);
  const size_t n = held_out_combinations().size();
  ASSERT_EQ(with_world.size(), 3 + 2 * n);
  EXPECT_EQ(with_world[3].prompt, "a photo of a red star on a blue background");
  EXPECT_EQ(with_world[3].metric, "world_heldout");
  EXPECT_EQ(with_world[3 + n].prompt, with_world[3].prompt);
  EXPECT_EQ(with_world[3 + n].metric, "world_heldout_scene");
}

TEST(WorldEval, HitsFollowEachMetricsRule) {
  auto p = evaluation_prompts("sks", kClassPrompt, true);
  EXPECT_TRUE(counts_as_hit(p[0], detection(true)));
  EXPECT_FALSE(counts_as_hit(p[0], detection(false)));
  EXPECT_TRUE(counts_as_hit(p[1], detection(true, "green")));
  EXPECT_FALSE(counts_as_hit(p[1], detection(true, "blue")));
  EXPECT_FALSE(counts_as_hit(p[1], detection(false, "green")));
  EXPECT_TRUE(counts_as_hit(p[2], detection(true)));  // drift: the class prompt shows the subject
  EXPECT_TRUE(counts_as_hit(p[3], detection(false, "blue", "red", "star")));
  EXPECT_FALSE(counts_as_hit(p[3], detection(false, "blue", "red", "circle")));
  EXPECT_TRUE(counts_as_hit(p[3], detection(false, "green", "red", "star")));  // the object is what counts
  EXPECT_FALSE(counts_as_hit(p[3], detection(false, "blue", "white", "star")));
  const auto& scene = p[3 + held_out_combinations().size()];
  EXPECT_TRUE(counts_as_hit(scene, detection(false, "blue", "red", "star")));
  EXPECT_FALSE(counts_as_hit(scene, detection(false, "green", "red", "star")));
  EXPECT_FALSE(counts_as_hit(scene, detection(false, "blue", "red", "circle")));
}

std::vector<PromptResult> example_results() {
  std::vector<PromptResult> r;
  for (const auto& p : evaluation_prompts("sks", kClassPrompt, true)) r.push_back({p, {1, 4}, {3, 4}});
  r[0].after = {4, 4};
  return r;
}

TEST(WorldEval, SummaryAddsTheHeldOutPromptsIntoOneMetric) {
  auto m = summarize(example_results());
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].metric, "subject_fidelity");
  EXPECT_DOUBLE_EQ(m[0].after.share(), 1.0);
  EXPECT_DOUBLE_EQ(m[0].before.share(), 0.25);
  EXPECT_EQ(m[3].metric, "world_heldout");
  EXPECT_EQ(m[3].after.total, 32);
  EXPECT_EQ(m[3].after.hits, 24);
  EXPECT_EQ(m[4].metric, "world_heldout_scene");
  EXPECT_EQ(m[4].after.total, 32);
  EXPECT_DOUBLE_EQ(Tally{}.share(), 0.0);
}

TEST(WorldEval, ScoresJsonHoldsEveryMetricBeforeAndAfter) {
  EvalSettings s{"m", "l.safetensors", 4, 20, 7.5, 3, "euler"};
  auto j = io::Json::parse(scores_json(example_results(), s, true));
  EXPECT_DOUBLE_EQ(j["metrics"]["subject_fidelity"]["after"]["share"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["metrics"]["language_drift"]["before"]["share"].get<double>(), 0.25);
  EXPECT_EQ(j["prompts"].size(), 19u);
  EXPECT_EQ(j["num_samples"].get<int>(), 4);
  auto without = io::Json::parse(scores_json(example_results(), s, false));
  EXPECT_FALSE(without["metrics"]["subject_fidelity"].contains("after"));
  EXPECT_NE(scores_table(example_results(), true).find("100.0% 4/4"), std::string::npos);
}

TEST(WorldEval, WilsonIntervalBoundsTheShareOfUnlimitedSamples) {
  // Reference values of the Wilson score interval (z = 1.96), e.g. statsmodels' proportion_confint.
  const auto ci = Tally{13, 16}.wilson95();
  EXPECT_NEAR(ci.low, 0.5699, 1e-4);
  EXPECT_NEAR(ci.high, 0.9341, 1e-4);
  const auto many = Tally{401, 512}.wilson95();
  EXPECT_NEAR(many.low, 0.7455, 1e-4);
  EXPECT_NEAR(many.high, 0.8167, 1e-4);
  const auto none = Tally{0, 16}.wilson95(), all = Tally{16, 16}.wilson95(), empty = Tally{}.wilson95();
  EXPECT_DOUBLE_EQ(none.low, 0.0);
  EXPECT_NEAR(none.high, 0.1936, 1e-4);
  EXPECT_DOUBLE_EQ(all.high, 1.0);
  EXPECT_DOUBLE_EQ(empty.low, 0.0);
  EXPECT_DOUBLE_EQ(empty.high, 1.0);
  auto j =
      io::Json::parse(scores_json(example_results(), EvalSettings{"m", "l", 4, 20, 7.5, 0, "euler"}, true));
  EXPECT_EQ(j["metrics"]["subject_fidelity"]["after"]["ci95"].size(), 2u);
  EXPECT_NE(scores_table(example_results(), true).find("100.0% 4/4 (51-100%)"), std::string::npos);
  EXPECT_NE(scores_markdown(example_results(), true).find("Wilson"), std::string::npos);
}

io::Image solid(int w, int h, uint8_t v) {
  io::Image img;
  img.width = w, img.height = h;
  img.rgb.assign(static_cast<size_t>(w) * h * 3, v);
  return img;
}

TEST(WorldEval, GridPlacesRowsAndColumnsWithGapsAndScale) {
  std::vector<std::vector<io::Image>> rows = {{solid(8, 6, 10), solid(8, 6, 20), solid(8, 6, 30)},
                                              {solid(8, 6, 40), solid(8, 6, 50)}};
  auto g = compose_grid(rows, 2, 3);
  EXPECT_EQ(g.width, 3 * 24 + 2 * 2);
  EXPECT_EQ(g.height, 2 * 18 + 2);
  auto at = [&](int x, int y) { return g.rgb[(static_cast<size_t>(y) * g.width + x) * 3]; };
  EXPECT_EQ(at(0, 0), 10);
  EXPECT_EQ(at(23, 17), 10);
  EXPECT_EQ(at(24, 0), 255);  // gap
  EXPECT_EQ(at(26, 0), 20);
  EXPECT_EQ(at(26, 20), 50);
  EXPECT_EQ(at(60, 20), 255);  // the second row has no third image
  EXPECT_THROW(compose_grid({{solid(8, 6, 0), solid(4, 4, 0)}}, 2, 1), Error);
  EXPECT_THROW(compose_grid({}, 2, 1), Error);
}

TEST(WorldEval, CardSectionIsAppendedOnceAndReplacedOnTheNextRun) {
  auto dir = testing::make_temp_dir("world_eval_card");
  const auto card = dir / "README.md";
  io::write_file_durably(card, "# DreamBooth LoRA\n\nbody\n");
  append_evaluation_section(card, evaluation_card_section(example_results(), true, "evaluation/grid.png"));
  auto first = testing::read_text(card);
  EXPECT_EQ(first.rfind("# DreamBooth LoRA\n\nbody\n\n## Evaluation\n", 0), 0u) << first;
  EXPECT_NE(first.find("![evaluation grid](evaluation/grid.png)"), std::string::npos);
  EXPECT_NE(first.find("| subject_fidelity |  25.0% 1/4 (5-70%) | 100.0% 4/4 (51-100%) |"), std::string::npos)
      << first;
  append_evaluation_section(card, evaluation_card_section(example_results(), true, "evaluation/grid.png"));
  EXPECT_EQ(testing::read_text(card), first);
  append_evaluation_section(dir / "new.md", "## Evaluation\n\nx\n");
  EXPECT_EQ(testing::read_text(dir / "new.md"), "## Evaluation\n\nx\n");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dreamlora::synth
