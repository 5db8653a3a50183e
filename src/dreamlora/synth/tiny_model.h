// The embedded default model: a tiny randomly initialised SD1.x- or SDXL-style pipeline in diffusers
// layout, shaped like the tiny pipelines of the parity fixtures, written by the project's own code.
#pragma once

#include <cstdint>
#include <filesystem>

namespace dreamlora::synth {

struct TinyModelOptions {
  bool sdxl = false;
  // The shapes-world preset: 64x64 images, VAE scale factor 4, a tokenizer whose merges make every world
  // word (colours, shapes, backgrounds) one token. SD1.x-style only.
  bool world = false;
  uint64_t seed = 0;
};

// Writes model_index.json and unet/, vae/, text_encoder/ (+ text_encoder_2/), tokenizer/
// (+ tokenizer_2/), scheduler/ into dir (created if missing).
void write_tiny_model(const std::filesystem::path& dir, const TinyModelOptions& options);

}  // namespace dreamlora::synth
