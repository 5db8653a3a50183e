// Reads a world image back: background colour, object colour and shape, and whether the DreamBooth
// subject (a red ring around a yellow square) is in it. Meant for samples of a small diffusion model,
// which are blurry and off-palette, so every decision is "nearest" or a tolerant threshold:
//
// 1. background: every pixel of the 2-pixel border votes for the family (colour or its shade) of the
//    nearest background colour; the majority names the background. Gradients and stripes only vary
//    down the image, so each row's background is estimated from that row's border pixels of the family.
// 2. object mask: pixels far (RGB distance > 50) from their row's background estimate, the family's
//    colour-to-shade segment and the border's median; the largest 8-connected part, refined to the pixels
//    nearer its median colour than the background (so blurred edges are cut half-way and a ring keeps
//    its hole), is the object.
// 3. object colour: the nearest object colour to the per-channel median of the object's pixels.
// 4. shape: each shape is drawn into the object's bounding box; the best intersection-over-union wins
//    (a ring differs from a circle by its hole).
// 5. subject: mask pixels near yellow and near red; the subject needs enough of both, red at least
//    comparable in area to yellow, and a thick band of red met along at least 7 of 8 rays cast from
//    yellow's centroid (a yellow object's anti-aliased rim on a red background is one pixel thin), on a
//    background that keeps red and yellow clear (a red ring on yellow would look the same).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dreamlora/io/image.h"

namespace dreamlora::synth {

struct Detection {
  std::string background;  // background colour name
  std::string colour;      // object colour name; empty when no object was found
  std::string shape;       // shape name; empty when no object was found
  double shape_iou = 0;    // of the chosen shape
  int64_t object_pixels = 0;
  bool has_subject = false;
};

Detection detect_world_image(const io::Image& image);

// 1 where a pixel differs from the background estimate (step 2, before keeping the largest part).
std::vector<uint8_t> object_mask(const io::Image& image, const std::string& background);
// Step 1 alone.
std::string detect_background(const io::Image& image);

}  // namespace dreamlora::synth
