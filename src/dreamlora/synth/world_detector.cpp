#include "dreamlora/synth/world_detector.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>

#include "dreamlora/common/error.h"
#include "dreamlora/synth/world.h"

namespace dreamlora::synth {

namespace {

constexpr double kMaskDistance = 50.0;           // off-background: farther than this from the background
constexpr double kRowFamilyDistance = 50.0;      // border pixels this close to the family estimate their row
constexpr double kSubjectColourDistance = 90.0;  // a pixel counts as red / yellow within this distance
constexpr int kBorder = 2;

using Colour = std::array<double, 3>;

Colour pixel(const io::Image& img, int x, int y) {
  const auto* p = &img.rgb[(static_cast<size_t>(y) * img.width + x) * 3];
  return {double(p[0]), double(p[1]), double(p[2])};
}

Colour to_colour(const Rgb& c) {
  return {double(c[0]), double(c[1]), double(c[2])};
}

double distance(const Colour& a, const Colour& b) {
  return std::sqrt((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1]) +
                   (a[2] - b[2]) * (a[2] - b[2]));
}

// Distance from p to the RGB segment between a and b (a background family's colour and shade).
double segment_distance(const Colour& p, const Colour& a, const Colour& b) {
  Colour ab{b[0] - a[0], b[1] - a[1], b[2] - a[2]}, ap{p[0] - a[0], p[1] - a[1], p[2] - a[2]};
  const double len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
  const double t =
      len2 > 0 ? std::clamp((ab[0] * ap[0] + ab[1] * ap[1] + ab[2] * ap[2]) / len2, 0.0, 1.0) : 0.0;
  return distance(p, {a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]});
}

std::string nearest_family(const Colour& p) {
  std::string best;
  double best_d = 1e18;
  for (const auto& c : background_colours()) {
    const double d = segment_distance(p, to_colour(c.rgb), to_colour(c.shade));
    if (d < best_d) best_d = d, best = c.name;
  }
  return best;
}

std::string nearest_object_colour(const Colour& p) {
  std::string best;
  double best_d = 1e18;
  for (const auto& c : object_colours()) {
    const double d = distance(p, to_colour(c.rgb));
    if (d < best_d) best_d = d, best = c.name;
  }
  return best;
}

bool on_border(const io::Image& img, int x, int y) {
  return x < kBorder || y < kBorder || x >= img.width - kBorder || y >= img.height - kBorder;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// The largest 8-connected part of mask (as a mask of its own).
std::vector<uint8_t> largest_component(const std::vector<uint8_t>& mask, int w, int h) {
  std::vector<int> label(mask.size(), 0);
  std::vector<int> stack;
  int best_label = 0, next = 0;
  size_t best_size = 0;
  for (size_t start = 0; start < mask.size(); ++start) {
    if (!mask[start] || label[start]) continue;
    label[start] = ++next;
    size_t size = 0;
    stack.assign(1, static_cast<int>(start));
    while (!stack.empty()) {
      const int i = stack.back();
      stack.pop_back();
      ++size;
      const int x = i % w, y = i / w;
      for (int dy = -1; dy <= 1; ++dy) {
        for (int dx = -1; dx <= 1; ++dx) {
          const int nx = x + dx, ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
          const int j = ny * w + nx;
          if (mask[j] && !label[j]) label[j] = next, stack.push_back(j);
        }
      }
    }
    if (size > best_size) best_size = size, best_label = next;
  }
  std::vector<uint8_t> out(mask.size(), 0);
  for (size_t i = 0; i < mask.size(); ++i) out[i] = best_label != 0 && label[i] == best_label;
  return out;
}

struct ShapeFit {
  std::string name;
  double iou = 0;
};

// Draws every shape into the bounding box of the component and keeps the best overlap.
ShapeFit fit_shape(const std::vector<uint8_t>& component, int w, int h) {
  int x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      if (component[y * w + x])
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  ShapeFit best;
  if (x1 < 0) return best;
  const double cx = (x0 + x1 + 1) / 2.0, cy = (y0 + y1 + 1) / 2.0;
  const double hx = (x1 + 1 - x0) / 2.0, hy = (y1 + 1 - y0) / 2.0;
  for (Shape s : all_shapes()) {
    int64_t inter = 0, uni = 0;
    for (int y = y0; y <= y1; ++y) {
      for (int x = x0; x <= x1; ++x) {
        const bool drawn = shape_contains(s, (x + 0.5 - cx) / hx, (y + 0.5 - cy) / hy);
        const bool seen = component[y * w + x] != 0;
        inter += drawn && seen;
        uni += drawn || seen;
      }
    }
    const double iou = uni > 0 ? double(inter) / double(uni) : 0.0;
    if (iou > best.iou) best = {shape_name(s), iou};
  }
  return best;
}

// What the background looks like: its family's colour-to-shade segment, the median of the family's
// border pixels, and each row's estimate from that row's border pixels of the family.
struct BackgroundModel {
  Colour a, b, fallback;
  std::vector<Colour> rows;
  double distance(const Colour& p, int y) const {
    return std::min({dreamlora::synth::distance(p, rows[y]), segment_distance(p, a, b),
                     dreamlora::synth::distance(p, fallback)});
  }
};

BackgroundModel background_model(const io::Image& img, const std::string& background) {
  const auto& family = colour_by_name(background);
  BackgroundModel m{to_colour(family.rgb), to_colour(family.shade), {}, {}};
  const int w = img.width, h = img.height;
  std::array<std::vector<double>, 3> channels;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      if (!on_border(img, x, y)) continue;
      const auto p = pixel(img, x, y);
      if (nearest_family(p) == background)
        for (int c = 0; c < 3; ++c) channels[c].push_back(p[c]);
    }
  }
  m.fallback = {median(channels[0]), median(channels[1]), median(channels[2])};
  for (int y = 0; y < h; ++y) {
    Colour row{0, 0, 0};
    int n = 0;
    for (int x : {0, 1, w - 2, w - 1}) {
      const auto p = pixel(img, x, y);
      if (segment_distance(p, m.a, m.b) < kRowFamilyDistance ||
          distance(p, m.fallback) < kRowFamilyDistance) {
        for (int c = 0; c < 3; ++c) row[c] += p[c];
        ++n;
      }
    }
    if (n > 0)
      for (int c = 0; c < 3; ++c) row[c] /= n;
    else
      row = m.fallback;
    m.rows.push_back(row);
  }
  return m;
}

Colour median_colour(const io::Image& img, const std::vector<uint8_t>& mask) {
  std::array<std::vector<double>, 3> channels;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      if (mask[y * img.width + x]) {
        const auto p = pixel(img, x, y);
        for (int c = 0; c < 3; ++c) channels[c].push_back(p[c]);
      }
  return {median(channels[0]), median(channels[1]), median(channels[2])};
}

// Blurred edges: keeps the pixels nearer the object's own colour than the background (half-way, where
// the fixed threshold keeps anything a little off the background), so a ring keeps its hole.
std::vector<uint8_t> refined_object(const io::Image& img, const BackgroundModel& model,
                                    const Colour& object) {
  std::vector<uint8_t> mask(static_cast<size_t>(img.width) * img.height, 0);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      const auto p = pixel(img, x, y);
      const double to_background = model.distance(p, y);
      mask[y * img.width + x] = to_background > kMaskDistance / 2 && distance(p, object) < to_background;
    }
  return largest_component(mask, img.width, img.height);
}

bool subject_pattern(const io::Image& img, const std::vector<uint8_t>& mask) {
  const int w = img.width, h = img.height;
  const Colour red = to_colour(colour_by_name("red").rgb), yellow = to_colour(colour_by_name("yellow").rgb);
  std::vector<uint8_t> is_red(mask.size(), 0);
  std::vector<std::array<int, 2>> yellows, reds;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      if (!mask[y * w + x]) continue;
      const auto p = pixel(img, x, y);
      const double dr = distance(p, red), dy = distance(p, yellow);
      if (dr < kSubjectColourDistance && dr < dy) is_red[y * w + x] = 1, reds.push_back({x, y});
      if (dy < kSubjectColourDistance && dy <= dr) yellows.push_back({x, y});
    }
  }
  const double area = double(w) * h;
  if (yellows.size() < area / 512 || reds.size() < area / 200 || reds.size() < 0.6 * yellows.size())
    return false;
  double cx = 0, cy = 0;
  for (const auto& p : yellows) cx += p[0] + 0.5, cy += p[1] + 0.5;
  cx /= yellows.size(), cy /= yellows.size();
  auto mean_radius = [&](const std::vector<std::array<int, 2>>& pts) {
    double sum = 0;
    for (const auto& p : pts) sum += std::hypot(p[0] + 0.5 - cx, p[1] + 0.5 - cy);
    return sum / pts.size();
  };
  if (mean_radius(reds) <= mean_radius(yellows)) return false;
  // A thick red band around yellow's centre in (almost) every direction.
  const int band = std::max(2, w / 32);
  const double pi = std::acos(-1.0);
  int surrounded = 0;
  for (int k = 0; k < 8; ++k) {
    const double dx = std::cos(k * pi / 4), dy = std::sin(k * pi / 4);
    int red_run = 0;
    for (double t = 0; t < std::max(w, h) / 2.0; t += 0.5) {
      const int x = static_cast<int>(std::floor(cx + t * dx)), y = static_cast<int>(std::floor(cy + t * dy));
      if (x < 0 || y < 0 || x >= w || y >= h) break;
      if (is_red[y * w + x]) ++red_run;
    }
    surrounded += red_run / 2 >= band;  // two samples per pixel along the ray
  }
  return surrounded >= 7;
}

}  // namespace

std::string detect_background(const io::Image& img) {
  DL_CHECK(img.width > 2 * kBorder && img.height > 2 * kBorder, "image too small to detect (", img.width, "x",
           img.height, ")");
  std::map<std::string, int> votes;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      if (on_border(img, x, y)) ++votes[nearest_family(pixel(img, x, y))];
  return std::max_element(votes.begin(), votes.end(), [](auto& a, auto& b) { return a.second < b.second; })
      ->first;
}

std::vector<uint8_t> object_mask(const io::Image& img, const std::string& background) {
  const auto model = background_model(img, background);
  std::vector<uint8_t> mask(static_cast<size_t>(img.width) * img.height, 0);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      mask[y * img.width + x] = model.distance(pixel(img, x, y), y) > kMaskDistance;
  return mask;
}

Detection detect_world_image(const io::Image& img) {
  DL_CHECK(img.rgb.size() == static_cast<size_t>(img.width) * img.height * 3, "image buffer of ",
           img.rgb.size(), " bytes does not match ", img.width, "x", img.height, " RGB");
  Detection d;
  d.background = detect_background(img);
  const auto mask = object_mask(img, d.background);
  // On a red, yellow or orange background the subject cannot be told apart (a red ring on yellow looks
  // like it), and its training images never have one.
  d.has_subject = distinct_colours("red", d.background) && distinct_colours("yellow", d.background) &&
                  subject_pattern(img, mask);
  const auto first = largest_component(mask, img.width, img.height);
  if (std::count(first.begin(), first.end(), 1) < 4) return d;
  const auto object = refined_object(img, background_model(img, d.background), median_colour(img, first));
  d.object_pixels = std::count(object.begin(), object.end(), 1);
  if (d.object_pixels < 4) return d;
  d.colour = nearest_object_colour(median_colour(img, object));
  const auto fit = fit_shape(object, img.width, img.height);
  d.shape = fit.name;
  d.shape_iou = fit.iou;
  return d;
}

}  // namespace dreamlora::synth
