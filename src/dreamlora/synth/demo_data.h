// The embedded default's data set: a distinctive subject (a red ring around a yellow square) drawn on
// varied backgrounds at varied positions and sizes, so a new user can train without bringing images.
#pragma once

#include <cstdint>
#include <filesystem>

namespace dreamlora::synth {

// Writes `count` PNGs of size x size into dir (subject-<i>.png); deterministic for a seed.
void write_demo_subject_images(const std::filesystem::path& dir, int64_t count, int64_t size, uint64_t seed);

}  // namespace dreamlora::synth
