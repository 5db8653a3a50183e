// DreamBooth data: instance images (+ optional NAME.txt captions) and class images, resized and cropped
// as diffusers' DreamBoothDataset does, turned into VAE latent distributions and text embeddings. Latents
// are cached per (image, flip) when the crop is deterministic; text embeddings are cached per caption
// while the text encoders are frozen.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dreamlora/io/image.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/train/buckets.h"

namespace dreamlora::train {

struct TrainingImage {
  std::filesystem::path path;
  std::string caption;
};

// How captions are read (kohya's and SimpleTuner's convention): NAME<extension> beside each image; an
// image without one gets the default caption. A template ("a photo of sks dog, {caption}") wraps the
// text of each caption file; "{prompt}" in it stands for the default caption.
struct CaptionOptions {
  std::string extension = ".txt";
  std::string templ;  // empty: caption files are used as they are
};

// Every image in dir (sorted by name), with its caption (see CaptionOptions) or default_caption.
// Errors (naming `flag` and the path): missing or empty folder, unreadable or zero-size image, empty caption.
std::vector<TrainingImage> list_training_images(const std::filesystem::path& dir,
                                                const std::string& default_caption, const std::string& flag,
                                                const CaptionOptions& captions = {});
// The caption of one image: the caption file's text through the template, or default_caption.
std::string caption_for(const std::filesystem::path& image, const std::string& default_caption,
                        const CaptionOptions& captions, const std::string& flag);

// Resize to exactly height x width (bilinear with antialiasing).
torch::Tensor resize_to(const torch::Tensor& chw, int64_t height, int64_t width);
// Resize so the shorter side equals size (bilinear with antialiasing, as torchvision's Resize on PIL).
torch::Tensor resize_shorter_side(const torch::Tensor& chw, int64_t size);

struct DatasetOptions {
  int64_t resolution = 512;
  bool center_crop = false;
  bool random_flip = false;
  bool cache_text = true;  // false when a text encoder is trained
  BucketOptions buckets;   // enabled: each image to its aspect-ratio bucket instead of a square crop
};

// One training example as the UNet sees it.
struct ExampleTensors {
  torch::Tensor latent_mean, latent_std;  // [C, h, w] (unscaled VAE latent distribution)
  std::string caption;
  torch::Tensor time_ids;  // [6] SDXL: original (h, w), crop (top, left), target (h, w)
};

// What decides one cached latent distribution besides the VAE: the image, its training size and crop.
struct LatentEntry {
  std::filesystem::path image;
  int64_t resolution = 0;
  bool center_crop = false;
  int64_t target_width = 0, target_height = 0, bucket = 0;
  int64_t crop_top = 0, crop_left = 0;
  bool flip = false;
};

// Where ImageSet::cache_all_latents looks for latent distributions before encoding them
// (--cache-latents-to-disk: latent_disk_cache.h), and hands the ones it encoded.
class LatentStore {
 public:
  virtual ~LatentStore() = default;
  // The entry's (mean, std) on the CPU when stored and valid for it; nothing otherwise.
  virtual std::optional<std::pair<torch::Tensor, torch::Tensor>> find(const LatentEntry& entry) = 0;
  virtual void store(const LatentEntry& entry, const torch::Tensor& mean, const torch::Tensor& std) = 0;
};

// The images of a set, each `repeats` times (--repeats): index i is file i % file_count(), so the order of
// a repeated set is that of the files listed `repeats` times; each file is decoded and encoded once.
class ImageSet {
 public:
  ImageSet(std::vector<TrainingImage> images, const DatasetOptions& options, int64_t repeats = 1);
  int64_t size() const { return file_count() * repeats_; }
  int64_t file_count() const { return static_cast<int64_t>(images_.size()); }
  const std::vector<TrainingImage>& images() const { return images_; }  // the files, once each
  int64_t decoded_count() const { return static_cast<int64_t>(decoded_.size()); }
  int64_t cached_latent_count() const { return static_cast<int64_t>(latent_cache_.size()); }
  // The bucket of each index (all 0 without bucketing), and the buckets' sizes.
  std::vector<int64_t> bucket_ids() const;
  const std::vector<BucketSize>& buckets() const { return buckets_; }
  // The size (width, height) an image is trained at: its bucket, or resolution x resolution.
  BucketSize target_size(int64_t index) const;
  // Draws flip / crop from gens[i] when they are random, then returns the latent distributions on the
  // VAE's device: cached ones as they are, the others from one VAE pass over all of them. Images with a
  // deterministic crop are encoded alone on first use, so the cache never depends on batch composition
  // (a resumed run sees the same latents as an uninterrupted one).
  std::vector<ExampleTensors> examples(const std::vector<int64_t>& indices, pipeline::ModelBundle& model,
                                       std::vector<at::Generator>& gens);
  ExampleTensors example(int64_t index, pipeline::ModelBundle& model, at::Generator& gen);
  // --cache-latents: encodes every file now (both flips with random_flip), each alone as a step would,
  // then releases the decoded pixels: the steps read the same latents as without it (bit-identical).
  // A file whose crop is random per step is an error naming --center-crop. With a store, the entries it
  // finds are taken from it (not encoded) and the ones encoded are handed to it.
  void cache_all_latents(pipeline::ModelBundle& model, LatentStore* store = nullptr);

 private:
  struct Decoded {
    torch::Tensor
        resized;  // [3, H', W'] in [0, 1], shorter side = resolution (released by cache_all_latents)
    int64_t height = 0, width = 0;  // of resized
    int64_t orig_h = 0, orig_w = 0;
  };
  const Decoded& decoded(int64_t file);
  int64_t file_of(int64_t index) const { return index % file_count(); }
  struct Crop {
    int64_t top = 0, left = 0;
    bool flip = false, random = false;
  };
  Crop draw_crop(int64_t index, at::Generator& gen);
  torch::Tensor cropped_pixels(int64_t index, const Crop& crop);
  const std::pair<torch::Tensor, torch::Tensor>& cached_latents(int64_t file, const Crop& crop,
                                                                pipeline::ModelBundle& model);
  std::vector<TrainingImage> images_;
  DatasetOptions options_;
  int64_t repeats_ = 1;
  std::vector<BucketSize> buckets_;
  std::vector<BucketChoice> choices_;   // per file, when bucketing
  std::map<int64_t, Decoded> decoded_;  // per file
  std::map<std::pair<int64_t, bool>, std::pair<torch::Tensor, torch::Tensor>> latent_cache_;  // (file, flip)
};

// "N images in M buckets: 512x512 (3), 576x448 (2), ..." for the log.
std::string bucket_summary(const ImageSet& set);

// Text embeddings of captions, cached while the encoders are frozen.
class CaptionEmbedder {
 public:
  explicit CaptionEmbedder(bool cache) : cache_(cache) {}
  // prompt_embeds [B, 77, D] (+ pooled [B, P] for SDXL) for the captions, in order.
  text::PromptEmbeddings embed(pipeline::ModelBundle& model, const std::vector<std::string>& captions);

 private:
  bool cache_;
  std::map<std::string, text::PromptEmbeddings> cache_map_;
};

}  // namespace dreamlora::train
