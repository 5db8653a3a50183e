#include "dreamlora/synth/world.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"

namespace dreamlora::synth {

namespace {

// Objects and subject differ from every colour of their background by at least this RGB distance.
constexpr double kMinColourDistance = 90.0;
constexpr int kSupersample = 4;              // subsamples per pixel side: mildly anti-aliased edges
constexpr double kRingInner = 0.5;           // world ring: inner radius / outer radius
constexpr double kSubjectRingInner = 0.62;   // subject: the ring's inner radius / outer radius
constexpr double kSubjectSquareHalf = 0.38;  // subject: the square's half side / ring outer radius

const std::vector<NamedColour>& colour_table() {
  static const std::vector<NamedColour> table = {
      {"red", {220, 40, 40}, {170, 25, 25}},      {"green", {40, 170, 60}, {25, 120, 40}},
      {"blue", {40, 80, 220}, {25, 50, 160}},     {"yellow", {240, 220, 40}, {200, 180, 20}},
      {"purple", {150, 60, 190}, {105, 35, 140}}, {"white", {245, 245, 245}, {200, 200, 200}},
      {"black", {20, 20, 20}, {50, 50, 50}},      {"gray", {128, 128, 128}, {100, 100, 100}},
      {"orange", {240, 140, 30}, {200, 105, 15}},
  };
  return table;
}
constexpr size_t kObjectColourCount = 6;  // the first six entries of colour_table()

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// One generator per (seed, index, stream), so any item is drawn without drawing the ones before it.
std::mt19937_64 item_rng(uint64_t seed, uint64_t index, uint64_t stream) {
  return std::mt19937_64(splitmix64(splitmix64(seed ^ (stream << 56)) ^ splitmix64(index)));
}

// Portable draws from the raw 64-bit output (the <random> distributions differ between libraries).
double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}
double uniform(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * uniform01(rng);
}
size_t pick(std::mt19937_64& rng, size_t n) {
  return static_cast<size_t>(rng() % n);
}

double rgb_distance(const Rgb& a, const Rgb& b) {
  double s = 0;
  for (int c = 0; c < 3; ++c) s += (a[c] - b[c]) * static_cast<double>(a[c] - b[c]);
  return std::sqrt(s);
}

std::string with_article(const std::string& word) {
  const bool vowel = !word.empty() && std::string("aeiou").find(word[0]) != std::string::npos;
  return (vowel ? "an " : "a ") + word;
}

// The star: 10 vertices (outer radius 1, inner 0.45, pointing up), mapped to fill [-1, 1]^2.
const std::array<std::array<double, 2>, 10>& star_vertices() {
  static const auto vertices = [] {
    std::array<std::array<double, 2>, 10> raw{};
    const double pi = std::acos(-1.0);
    double min_x = 1e9, max_x = -1e9, min_y = 1e9, max_y = -1e9;
    for (int k = 0; k < 10; ++k) {
      const double angle = -pi / 2 + k * pi / 5, radius = k % 2 == 0 ? 1.0 : 0.45;
      raw[k] = {radius * std::cos(angle), radius * std::sin(angle)};
      min_x = std::min(min_x, raw[k][0]), max_x = std::max(max_x, raw[k][0]);
      min_y = std::min(min_y, raw[k][1]), max_y = std::max(max_y, raw[k][1]);
    }
    for (auto& p : raw)
      p = {2 * (p[0] - min_x) / (max_x - min_x) - 1, 2 * (p[1] - min_y) / (max_y - min_y) - 1};
    return raw;
  }();
  return vertices;
}

bool inside_polygon(const std::array<std::array<double, 2>, 10>& poly, double u, double v) {
  bool inside = false;
  for (size_t i = 0, j = poly.size() - 1; i < poly.size(); j = i++) {
    const auto &a = poly[i], &b = poly[j];
    if ((a[1] > v) != (b[1] > v) && u < (b[0] - a[0]) * (v - a[1]) / (b[1] - a[1]) + a[0]) inside = !inside;
  }
  return inside;
}

std::array<double, 3> background_at(const NamedColour& colour, BackgroundStyle style, int x, int y,
                                    int size) {
  double f = 0;  // 0: the colour, 1: its shade
  if (style == BackgroundStyle::gradient) f = size > 1 ? static_cast<double>(y) / (size - 1) : 0.0;
  if (style == BackgroundStyle::stripes) f = (y / std::max(2, size / 8)) % 2;
  std::array<double, 3> out{};
  for (int c = 0; c < 3; ++c) out[c] = colour.rgb[c] * (1 - f) + colour.shade[c] * f;
  return out;
}

// Fills the image: background, then per pixel the mean colour of its subsamples, where colour_at(px, py)
// gives the object colour at a subsample or nullptr for the background.
template <typename ColourAt>
io::Image render(const NamedColour& background, BackgroundStyle style, int size, ColourAt colour_at) {
  io::Image img;
  img.width = img.height = size;
  img.rgb.resize(static_cast<size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const auto bg = background_at(background, style, x, y, size);
      std::array<double, 3> sum{};
      for (int sy = 0; sy < kSupersample; ++sy) {
        for (int sx = 0; sx < kSupersample; ++sx) {
          const Rgb* c = colour_at(x + (sx + 0.5) / kSupersample, y + (sy + 0.5) / kSupersample);
          for (int k = 0; k < 3; ++k) sum[k] += c ? (*c)[k] : bg[k];
        }
      }
      auto* p = &img.rgb[(static_cast<size_t>(y) * size + x) * 3];
      for (int k = 0; k < 3; ++k)
        p[k] = static_cast<uint8_t>(std::lround(sum[k] / (kSupersample * kSupersample)));
    }
  }
  return img;
}

std::string index_name(int64_t i) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06lld", static_cast<long long>(i));
  return name;
}

}  // namespace

const std::vector<NamedColour>& object_colours() {
  static const std::vector<NamedColour> colours(colour_table().begin(),
                                                colour_table().begin() + kObjectColourCount);
  return colours;
}

const std::vector<NamedColour>& background_colours() {
  return colour_table();
}

const NamedColour& colour_by_name(const std::string& name) {
  for (const auto& c : colour_table())
    if (c.name == name) return c;
  fail(str("unknown colour '", name, "'"));
}

const std::vector<Shape>& all_shapes() {
  static const std::vector<Shape> shapes = {Shape::circle, Shape::square, Shape::triangle, Shape::star,
                                            Shape::ring};
  return shapes;
}

std::string shape_name(Shape shape) {
  switch (shape) {
    case Shape::circle:
      return "circle";
    case Shape::square:
      return "square";
    case Shape::triangle:
      return "triangle";
    case Shape::star:
      return "star";
    case Shape::ring:
      return "ring";
  }
  return "?";
}

Shape shape_by_name(const std::string& name) {
  for (Shape s : all_shapes())
    if (shape_name(s) == name) return s;
  fail(str("unknown shape '", name, "' (circle, square, triangle, star or ring)"));
}

bool shape_contains(Shape shape, double u, double v) {
  const double r2 = u * u + v * v;
  switch (shape) {
    case Shape::circle:
      return r2 <= 1.0;
    case Shape::square:
      return std::abs(u) <= 1.0 && std::abs(v) <= 1.0;
    case Shape::triangle:
      return v <= 1.0 && std::abs(u) <= (v + 1.0) / 2.0;
    case Shape::star:
      return inside_polygon(star_vertices(), u, v);
    case Shape::ring:
      return r2 <= 1.0 && r2 >= kRingInner * kRingInner;
  }
  return false;
}

std::string style_name(BackgroundStyle style) {
  switch (style) {
    case BackgroundStyle::plain:
      return "plain";
    case BackgroundStyle::gradient:
      return "gradient";
    case BackgroundStyle::stripes:
      return "stripes";
  }
  return "?";
}

bool distinct_colours(const std::string& object_colour, const std::string& background_colour) {
  if (object_colour == background_colour) return false;
  const auto& o = colour_by_name(object_colour);
  const auto& b = colour_by_name(background_colour);
  return rgb_distance(o.rgb, b.rgb) >= kMinColourDistance &&
         rgb_distance(o.rgb, b.shade) >= kMinColourDistance;
}

std::string world_caption(const Scene& s) {
  const std::string object = s.colour + " " + shape_name(s.shape);
  const std::string on_background = " on " + with_article(s.background) + " background";
  switch (s.caption_form) {
    case CaptionForm::full:
      return "a photo of " + with_article(object) + on_background;
    case CaptionForm::shape_only:
      return "a photo of " + with_article(object);
    case CaptionForm::toy_on_background:
      return "a photo of " + with_article(s.colour + " toy") + on_background;
    case CaptionForm::colour_toy:
      return "a photo of " + with_article(s.colour + " toy");
    case CaptionForm::toy:
      return kClassPrompt;
  }
  return kClassPrompt;
}

std::string world_prompt(const std::string& colour, Shape shape, const std::string& background) {
  Scene s;
  s.colour = colour, s.shape = shape, s.background = background;
  return world_caption(s);
}

std::string subject_prompt(const std::string& identifier, const std::string& background) {
  std::string p = "a photo of " + identifier + " toy";
  if (!background.empty()) p += " on " + with_article(background) + " background";
  return p;
}

const std::vector<Combination>& held_out_combinations() {
  static const std::vector<Combination> combos = {
      {"red", Shape::star, "blue"},        {"green", Shape::ring, "white"},
      {"blue", Shape::triangle, "yellow"}, {"yellow", Shape::circle, "purple"},
      {"purple", Shape::square, "green"},  {"white", Shape::star, "black"},
      {"red", Shape::triangle, "gray"},    {"blue", Shape::ring, "orange"},
  };
  return combos;
}

bool is_held_out(const std::string& colour, Shape shape, const std::string& background) {
  for (const auto& c : held_out_combinations())
    if (c.colour == colour && c.shape == shape && c.background == background) return true;
  return false;
}

Scene world_scene(uint64_t seed, uint64_t index, int size) {
  DL_CHECK(size >= 16, "world image size must be at least 16 pixels, got ", size);
  auto rng = item_rng(seed, index, 1);
  Scene s;
  do {
    s.colour = object_colours()[pick(rng, object_colours().size())].name;
    s.shape = all_shapes()[pick(rng, all_shapes().size())];
    s.background = background_colours()[pick(rng, background_colours().size())].name;
  } while (!distinct_colours(s.colour, s.background) || is_held_out(s.colour, s.shape, s.background));
  s.style = static_cast<BackgroundStyle>(pick(rng, 3));
  s.half_size = size * uniform(rng, 0.14, 0.266);
  s.center_x = uniform(rng, s.half_size + 1, size - 1 - s.half_size);
  s.center_y = uniform(rng, s.half_size + 1, size - 1 - s.half_size);
  const double form = uniform01(rng);
  s.caption_form = form < 0.70   ? CaptionForm::full
                   : form < 0.78 ? CaptionForm::shape_only
                   : form < 0.90 ? CaptionForm::toy_on_background
                   : form < 0.95 ? CaptionForm::colour_toy
                                 : CaptionForm::toy;
  return s;
}

io::Image render_scene(const Scene& s, int size) {
  const Rgb object = colour_by_name(s.colour).rgb;
  return render(colour_by_name(s.background), s.style, size, [&](double px, double py) -> const Rgb* {
    const double u = (px - s.center_x) / s.half_size, v = (py - s.center_y) / s.half_size;
    return shape_contains(s.shape, u, v) ? &object : nullptr;
  });
}

WorldSample world_sample(uint64_t seed, uint64_t index, int size) {
  WorldSample out;
  out.scene = world_scene(seed, index, size);
  out.caption = world_caption(out.scene);
  out.image = render_scene(out.scene, size);
  return out;
}

const std::vector<std::string>& subject_backgrounds() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& c : background_colours())
      if (distinct_colours("red", c.name) && distinct_colours("yellow", c.name) &&
          c.name != kSubjectPromptBackground)
        out.push_back(c.name);
    return out;
  }();
  return names;
}

SubjectScene subject_scene(uint64_t seed, uint64_t index, int size) {
  DL_CHECK(size >= 16, "subject image size must be at least 16 pixels, got ", size);
  auto rng = item_rng(seed, index, 2);
  SubjectScene s;
  // Consecutive images cycle through the backgrounds, so a handful of images shows each of them.
  const auto& backgrounds = subject_backgrounds();
  auto offset_rng = item_rng(seed, 0, 3);
  s.background = backgrounds[(pick(offset_rng, backgrounds.size()) + index) % backgrounds.size()];
  s.style = static_cast<BackgroundStyle>(pick(rng, 3));
  s.radius = size * uniform(rng, 0.17, 0.25);
  s.center_x = uniform(rng, s.radius + 1, size - 1 - s.radius);
  s.center_y = uniform(rng, s.radius + 1, size - 1 - s.radius);
  return s;
}

io::Image render_subject(const SubjectScene& s, int size) {
  const Rgb red = colour_by_name("red").rgb, yellow = colour_by_name("yellow").rgb;
  return render(colour_by_name(s.background), s.style, size, [&](double px, double py) -> const Rgb* {
    const double u = (px - s.center_x) / s.radius, v = (py - s.center_y) / s.radius;
    if (std::abs(u) <= kSubjectSquareHalf && std::abs(v) <= kSubjectSquareHalf) return &yellow;
    const double r2 = u * u + v * v;
    if (r2 <= 1.0 && r2 >= kSubjectRingInner * kSubjectRingInner) return &red;
    return nullptr;
  });
}

void write_world_data(const std::filesystem::path& dir, int64_t count, uint64_t seed, int size) {
  DL_CHECK(count >= 0, "--count must not be negative, got ", count);
  std::filesystem::create_directories(dir);
  for (int64_t i = 0; i < count; ++i) {
    const auto sample = world_sample(seed, static_cast<uint64_t>(i), size);
    const auto name = index_name(i);
    io::save_png(dir / (name + ".png"), sample.image);
    io::write_file_durably(dir / (name + ".txt"), sample.caption + "\n");
  }
}

void write_world_subject(const std::filesystem::path& dir, int64_t count, uint64_t seed, int size) {
  DL_CHECK(count >= 0, "--count must not be negative, got ", count);
  std::filesystem::create_directories(dir);
  for (int64_t i = 0; i < count; ++i)
    io::save_png(dir / ("subject-" + std::to_string(i) + ".png"),
                 render_subject(subject_scene(seed, static_cast<uint64_t>(i), size), size));
}

}  // namespace dreamlora::synth
