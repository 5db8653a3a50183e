// A procedural world for the tiny pretrained pipeline and its DreamBooth subject: one flat-coloured object
// (circle, square, triangle, star, ring) of a named colour on a plain, gradient or striped background of
// another named colour, captioned "a photo of a red circle on a blue background". Some captions call the
// object a "toy" (the class noun of prior preservation). A few (colour, shape, background) combinations
// are never generated, so an evaluation can ask for them. The subject (a red ring around a yellow square)
// never appears in the world.
//
// Everything is a pure function of (seed, index): the random draws use std::mt19937_64's raw output (fixed
// by the C++ standard) in a fixed order, never the library-specific distributions, so every build and
// platform writes the same bytes.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dreamlora/io/image.h"

namespace dreamlora::synth {

using Rgb = std::array<uint8_t, 3>;

struct NamedColour {
  std::string name;
  Rgb rgb;    // the colour of a plain background and of objects
  Rgb shade;  // the second colour of gradients and stripes (same family)
};

// Colours objects take (red, green, blue, yellow, purple, white).
const std::vector<NamedColour>& object_colours();
// Colours backgrounds take: the object colours plus black, gray and orange.
const std::vector<NamedColour>& background_colours();
// The entry of background_colours() with that name; throws for an unknown name.
const NamedColour& colour_by_name(const std::string& name);

enum class Shape { circle, square, triangle, star, ring };
const std::vector<Shape>& all_shapes();
std::string shape_name(Shape shape);
Shape shape_by_name(const std::string& name);
// Whether the normalised point (u, v) lies inside the shape; each shape fills the box [-1, 1]^2 exactly
// (v grows downwards; the triangle and the star point up).
bool shape_contains(Shape shape, double u, double v);

enum class BackgroundStyle { plain, gradient, stripes };
std::string style_name(BackgroundStyle style);

// Whether an object of this colour is told apart clearly from this background (every pair of their
// colours is far apart in RGB). Scenes only use such pairs.
bool distinct_colours(const std::string& object_colour, const std::string& background_colour);

// What the caption says: the full description, or the class noun "toy" in place of the shape.
enum class CaptionForm { full, shape_only, toy_on_background, colour_toy, toy };

struct Scene {
  std::string colour;  // object colour name
  Shape shape = Shape::circle;
  std::string background;  // background colour name
  BackgroundStyle style = BackgroundStyle::plain;
  double center_x = 0, center_y = 0;  // pixels
  double half_size = 0;               // pixels: the object fills [center - half_size, center + half_size]^2
  CaptionForm caption_form = CaptionForm::full;
};

// The caption grammar, in one place for the data and the evaluator.
std::string world_caption(const Scene& scene);
std::string world_prompt(const std::string& colour, Shape shape, const std::string& background);
// "a photo of sks toy" and "a photo of sks toy on a green background" for identifier "sks".
std::string subject_prompt(const std::string& identifier, const std::string& background = "");
inline constexpr const char* kClassPrompt = "a photo of a toy";

// Combinations never drawn into the world's data.
struct Combination {
  std::string colour;
  Shape shape;
  std::string background;
};
const std::vector<Combination>& held_out_combinations();
bool is_held_out(const std::string& colour, Shape shape, const std::string& background);

// The index-th scene of the world with this seed (size: image side in pixels).
Scene world_scene(uint64_t seed, uint64_t index, int size);
// Draws the scene: background, then the object with 4x4 supersampled edges.
io::Image render_scene(const Scene& scene, int size);

struct WorldSample {
  Scene scene;
  std::string caption;
  io::Image image;
};
WorldSample world_sample(uint64_t seed, uint64_t index, int size);

// The DreamBooth subject: a red ring around a yellow square, at a position and size of its own, on a
// background that keeps both colours clear.
struct SubjectScene {
  std::string background;
  BackgroundStyle style = BackgroundStyle::plain;
  double center_x = 0, center_y = 0, radius = 0;  // pixels: the ring's outer radius
};
SubjectScene subject_scene(uint64_t seed, uint64_t index, int size);
io::Image render_subject(const SubjectScene& scene, int size);
// Backgrounds the subject's training images use: those that keep red and yellow clear, except the one
// the evaluation prompts it on (so "on a green background" asks for a context it never saw).
const std::vector<std::string>& subject_backgrounds();
inline constexpr const char* kSubjectPromptBackground = "green";

// make-world-data: dir/000000.png + dir/000000.txt (the caption) for indices [0, count).
void write_world_data(const std::filesystem::path& dir, int64_t count, uint64_t seed, int size);
// The subject's training images: dir/subject-0.png ... (no captions: training gives --prompt).
void write_world_subject(const std::filesystem::path& dir, int64_t count, uint64_t seed, int size);

}  // namespace dreamlora::synth
