#include "dreamlora/train/dataset.h"

#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "dreamlora/common/error.h"
#include "dreamlora/io/image_tensor.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

namespace {
std::string read_caption(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  text.erase(0, text.find_first_not_of(" \t\r\n"));
  text.erase(text.find_last_not_of(" \t\r\n") + 1);
  return text;
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}
}  // namespace

std::string caption_for(const fs::path& image, const std::string& default_caption,
                        const CaptionOptions& captions, const std::string& flag) {
  const auto caption_file = fs::path(image).replace_extension(captions.extension);
  if (!fs::exists(caption_file)) return default_caption;
  std::string text = read_caption(caption_file);
  DL_CHECK(!text.empty(), flag, ": caption ", caption_file.string(), " is empty");
  if (captions.templ.empty()) return text;
  std::string out = captions.templ;
  replace_all(out, "{prompt}", default_caption);
  replace_all(out, "{caption}", text);
  return out;
}

std::vector<TrainingImage> list_training_images(const fs::path& dir, const std::string& default_caption,
                                                const std::string& flag, const CaptionOptions& captions) {
  DL_CHECK(fs::is_directory(dir), flag, " ", dir.string(), ": not a folder");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && io::is_image_file(e.path())) files.push_back(e.path());
  DL_CHECK(!files.empty(), flag, " ", dir.string(), ": no images (png, jpg, jpeg, bmp, webp) in the folder");
  std::sort(files.begin(), files.end());
  std::vector<TrainingImage> out;
  for (const auto& f : files) {
    DL_CHECK(fs::file_size(f) > 0, flag, ": ", f.string(), " is empty (0 bytes)");
    std::string caption = caption_for(f, default_caption, captions, flag);
    DL_CHECK(!caption.empty(), flag, ": ", f.string(), " has no caption (and the default caption is empty)");
    out.push_back({f, caption});
  }
  return out;
}

torch::Tensor resize_to(const torch::Tensor& chw, int64_t height, int64_t width) {
  if (chw.size(1) == height && chw.size(2) == width) return chw;
  namespace F = torch::nn::functional;
  auto out = F::interpolate(chw.unsqueeze(0), F::InterpolateFuncOptions()
                                                  .size(std::vector<int64_t>{height, width})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false)
                                                  .antialias(true));
  return out.squeeze(0).clamp_(0, 1);
}

torch::Tensor resize_shorter_side(const torch::Tensor& chw, int64_t size) {
  const int64_t h = chw.size(1), w = chw.size(2);
  const int64_t short_side = std::min(h, w), long_side = std::max(h, w);
  if (short_side == size) return chw;
  // torchvision: the long side becomes int(size * long / short)
  const int64_t new_long = static_cast<int64_t>(static_cast<double>(size) * long_side / short_side);
  const int64_t nh = h <= w ? size : new_long, nw = h <= w ? new_long : size;
  namespace F = torch::nn::functional;
  auto out = F::interpolate(chw.unsqueeze(0), F::InterpolateFuncOptions()
                                                  .size(std::vector<int64_t>{nh, nw})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false)
                                                  .antialias(true));
  return out.squeeze(0).clamp_(0, 1);
}

ImageSet::ImageSet(std::vector<TrainingImage> images, const DatasetOptions& options, int64_t repeats)
    : images_(std::move(images)), options_(options), repeats_(repeats) {
  DL_CHECK(repeats_ >= 1, "ImageSet: repeats must be at least 1, got ", repeats_);
  if (options_.buckets.enabled) {
    buckets_ = make_bucket_resolutions(options_.buckets);
  } else {
    buckets_ = {{options_.resolution, options_.resolution}};
  }
  // Decode everything now: a bad image is reported by name before any training step.
  for (int64_t f = 0; f < file_count(); ++f) decoded(f);
}

std::vector<int64_t> ImageSet::bucket_ids() const {
  std::vector<int64_t> ids(static_cast<size_t>(size()), 0);
  if (!choices_.empty())
    for (int64_t i = 0; i < size(); ++i) ids[static_cast<size_t>(i)] = choices_[file_of(i)].bucket;
  return ids;
}

BucketSize ImageSet::target_size(int64_t index) const {
  if (!options_.buckets.enabled) return buckets_.front();
  return buckets_.at(choices_.at(file_of(index)).bucket);
}

const ImageSet::Decoded& ImageSet::decoded(int64_t file) {
  auto it = decoded_.find(file);
  if (it != decoded_.end()) return it->second;
  io::Image img = io::load_image(images_.at(file).path);
  Decoded d;
  d.orig_h = img.height;
  d.orig_w = img.width;
  if (options_.buckets.enabled) {
    // Files are decoded in order (constructor), so choices_[file] is the next one.
    const auto choice = select_bucket(buckets_, img.width, img.height);
    choices_.push_back(choice);
    d.resized = resize_to(io::image_to_tensor(img), choice.resized_height, choice.resized_width);
  } else {
    d.resized = resize_shorter_side(io::image_to_tensor(img), options_.resolution);
  }
  d.height = d.resized.size(1);
  d.width = d.resized.size(2);
  return decoded_.emplace(file, std::move(d)).first->second;
}

ImageSet::Crop ImageSet::draw_crop(int64_t file, at::Generator& gen) {
  const Decoded& d = decoded(file);
  const auto target = target_size(file);
  const int64_t th = target.height, tw = target.width;
  const int64_t h = d.height, w = d.width;
  Crop c;
  if (options_.random_flip) c.flip = torch::rand({1}, gen).item<float>() < 0.5f;
  c.random = !options_.center_crop && (h > th || w > tw);
  if (options_.center_crop) {
    c.top = static_cast<int64_t>(std::lround((h - th) / 2.0));
    c.left = static_cast<int64_t>(std::lround((w - tw) / 2.0));
  } else if (c.random) {
    c.top = torch::randint(0, h - th + 1, {1}, gen).item<int64_t>();
    c.left = torch::randint(0, w - tw + 1, {1}, gen).item<int64_t>();
  }
  return c;
}

torch::Tensor ImageSet::cropped_pixels(int64_t file, const Crop& crop) {
  const auto target = target_size(file);
  auto pixels = decoded(file)
                    .resized.slice(1, crop.top, crop.top + target.height)
                    .slice(2, crop.left, crop.left + target.width);
  if (crop.flip) pixels = pixels.flip({2});
  return pixels * 2.0 - 1.0;  // [3, height, width] in [-1, 1]
}

std::vector<ExampleTensors> ImageSet::examples(const std::vector<int64_t>& indices,
                                               pipeline::ModelBundle& model,
                                               std::vector<at::Generator>& gens) {
  DL_CHECK(indices.size() == gens.size(), "ImageSet::examples: one generator per example");
  const auto device = model.vae->parameters().front().device();
  std::vector<ExampleTensors> out(indices.size());
  std::vector<size_t> to_encode;
  std::vector<torch::Tensor> pixels;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < indices.size(); ++i) {
    DL_CHECK(indices[i] >= 0 && indices[i] < size(), "ImageSet::examples: index ", indices[i], " of ",
             size());
    const int64_t index = file_of(indices[i]);  // the file: repeats share its pixels and latents
    const Crop crop = draw_crop(index, gens[i]);
    const Decoded& d = decoded(index);
    auto& ex = out[i];
    ex.caption = images_[index].caption;
    const auto target = target_size(index);
    ex.time_ids = torch::tensor({static_cast<float>(d.orig_h), static_cast<float>(d.orig_w),
                                 static_cast<float>(crop.top), static_cast<float>(crop.left),
                                 static_cast<float>(target.height), static_cast<float>(target.width)});
    if (crop.random) {
      to_encode.push_back(i);
      pixels.push_back(cropped_pixels(index, crop));
      continue;
    }
    const auto& cached = cached_latents(index, crop, model);
    ex.latent_mean = cached.first;
    ex.latent_std = cached.second;
  }
  if (!to_encode.empty()) {
    auto dist = model.vae->encode(torch::stack(pixels).to(device));
    for (size_t j = 0; j < to_encode.size(); ++j) {
      out[to_encode[j]].latent_mean = dist.mean[static_cast<int64_t>(j)];
      out[to_encode[j]].latent_std = dist.std[static_cast<int64_t>(j)];
    }
  }
  return out;
}

const std::pair<torch::Tensor, torch::Tensor>& ImageSet::cached_latents(int64_t file, const Crop& crop,
                                                                        pipeline::ModelBundle& model) {
  const auto key = std::make_pair(file, crop.flip);
  auto cached = latent_cache_.find(key);
  if (cached == latent_cache_.end()) {
    DL_CHECK(decoded(file).resized.defined(), "ImageSet: the pixels of ", images_[file].path.string(),
             " were released after --cache-latents, but its latents are not cached");
    torch::NoGradGuard no_grad;
    const auto device = model.vae->parameters().front().device();
    auto dist = model.vae->encode(cropped_pixels(file, crop).unsqueeze(0).to(device));
    cached = latent_cache_.emplace(key, std::make_pair(dist.mean.squeeze(0), dist.std.squeeze(0))).first;
  }
  return cached->second;
}

void ImageSet::cache_all_latents(pipeline::ModelBundle& model, LatentStore* store) {
  for (int64_t f = 0; f < file_count(); ++f) {
    const Decoded& d = decoded(f);
    const auto target = target_size(f);
    DL_CHECK(options_.center_crop || (d.height <= target.height && d.width <= target.width),
             "--cache-latents: ", images_[f].path.string(), " is ", d.width, "x", d.height,
             " after resizing, larger than its ", target.width, "x", target.height,
             " training size, so its crop is random at every step and its latents cannot be cached; pass "
             "--center-crop, or drop --cache-latents / --cache-latents-to-disk (kohya refuses cache_latents "
             "with random_crop too)");
    // The same crop draw_crop makes (no draw is random here), for each flip a step can draw.
    Crop crop;
    if (options_.center_crop) {
      crop.top = static_cast<int64_t>(std::lround((d.height - target.height) / 2.0));
      crop.left = static_cast<int64_t>(std::lround((d.width - target.width) / 2.0));
    }
    for (bool flip : {false, true}) {
      if (flip && !options_.random_flip) continue;
      crop.flip = flip;
      if (!store || latent_cache_.count({f, flip})) {
        cached_latents(f, crop, model);
        continue;
      }
      LatentEntry entry{images_[f].path, options_.resolution, options_.center_crop, target.width,
                        target.height};
      entry.bucket = choices_.empty() ? 0 : choices_[f].bucket;
      entry.crop_top = crop.top;
      entry.crop_left = crop.left;
      entry.flip = flip;
      if (auto found = store->find(entry)) {
        const auto device = model.vae->parameters().front().device();
        latent_cache_.emplace(std::make_pair(f, flip),
                              std::make_pair(found->first.to(device), found->second.to(device)));
        continue;
      }
      const auto& latents = cached_latents(f, crop, model);
      store->store(entry, latents.first, latents.second);
    }
  }
  for (auto& [f, d] : decoded_) d.resized = torch::Tensor();  // the latents are all a step reads now
}

ExampleTensors ImageSet::example(int64_t index, pipeline::ModelBundle& model, at::Generator& gen) {
  std::vector<at::Generator> gens{gen};
  return examples({index}, model, gens).front();
}

std::string bucket_summary(const ImageSet& set) {
  std::map<int64_t, int64_t> counts;
  for (int64_t b : set.bucket_ids()) ++counts[b];
  std::ostringstream os;
  os << set.size() << " images in " << counts.size() << " bucket" << (counts.size() == 1 ? "" : "s") << ":";
  for (const auto& [b, n] : counts)
    os << " " << set.buckets()[b].width << "x" << set.buckets()[b].height << " (" << n << ")";
  return os.str();
}

text::PromptEmbeddings CaptionEmbedder::embed(pipeline::ModelBundle& model,
                                              const std::vector<std::string>& captions) {
  if (!cache_) return text::encode_prompt(model.text, captions);
  std::vector<torch::Tensor> embeds, pooled;
  for (const auto& c : captions) {
    auto it = cache_map_.find(c);
    if (it == cache_map_.end()) {
      torch::NoGradGuard no_grad;
      it = cache_map_.emplace(c, text::encode_prompt(model.text, {c})).first;
    }
    embeds.push_back(it->second.prompt_embeds);
    if (it->second.pooled_prompt_embeds.defined()) pooled.push_back(it->second.pooled_prompt_embeds);
  }
  text::PromptEmbeddings out;
  out.prompt_embeds = torch::cat(embeds, 0);
  if (!pooled.empty()) out.pooled_prompt_embeds = torch::cat(pooled, 0);
  return out;
}

}  // namespace dreamlora::train
