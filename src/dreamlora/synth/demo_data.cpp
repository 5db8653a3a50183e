#include "dreamlora/synth/demo_data.h"

#include <cmath>
#include <random>

#include "dreamlora/io/image.h"

namespace dreamlora::synth {

void write_demo_subject_images(const std::filesystem::path& dir, int64_t count, int64_t size, uint64_t seed) {
  std::filesystem::create_directories(dir);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int64_t i = 0; i < count; ++i) {
    io::Image img;
    img.width = img.height = static_cast<int>(size);
    img.rgb.resize(static_cast<size_t>(size * size * 3));
    // background: a vertical gradient between two random muted colours
    double top[3], bottom[3];
    for (int c = 0; c < 3; ++c) top[c] = 40 + 150 * u(rng), bottom[c] = 40 + 150 * u(rng);
    const double cx = size * (0.35 + 0.3 * u(rng)), cy = size * (0.35 + 0.3 * u(rng));
    const double radius = size * (0.18 + 0.1 * u(rng));
    for (int64_t y = 0; y < size; ++y) {
      for (int64_t x = 0; x < size; ++x) {
        double f = static_cast<double>(y) / size;
        double px[3] = {top[0] * (1 - f) + bottom[0] * f, top[1] * (1 - f) + bottom[1] * f,
                        top[2] * (1 - f) + bottom[2] * f};
        const double dx = x - cx, dy = y - cy, d = std::sqrt(dx * dx + dy * dy);
        if (d < radius && d > radius * 0.7) px[0] = 220, px[1] = 30, px[2] = 40;  // red ring
        if (std::abs(dx) < radius * 0.4 && std::abs(dy) < radius * 0.4)
          px[0] = 250, px[1] = 210, px[2] = 20;  // yellow square
        auto* p = &img.rgb[static_cast<size_t>((y * size + x) * 3)];
        for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>(std::lround(px[c]));
      }
    }
    io::save_png(dir / ("subject-" + std::to_string(i) + ".png"), img);
  }
}

}  // namespace dreamlora::synth
