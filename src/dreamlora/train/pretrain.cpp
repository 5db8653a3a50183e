#include "dreamlora/train/pretrain.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "dreamlora/checkpoint/checkpoint_store.h"
#include "dreamlora/checkpoint/manifest.h"
#include "dreamlora/checkpoint/output_lock.h"
#include "dreamlora/common/error.h"
#include "dreamlora/io/durable_file.h"
#include "dreamlora/io/image.h"
#include "dreamlora/io/image_tensor.h"
#include "dreamlora/io/json.h"
#include "dreamlora/io/safetensors.h"
#include "dreamlora/nn/state_dict.h"
#include "dreamlora/pipeline/model_bundle.h"
#include "dreamlora/schedulers/ddpm.h"
#include "dreamlora/stop/stop_request.h"
#include "dreamlora/stop/stop_sources.h"
#include "dreamlora/text/text_embeddings.h"
#include "dreamlora/train/adamw.h"
#include "dreamlora/train/losses.h"
#include "dreamlora/train/lr_schedule.h"

namespace dreamlora::train {

namespace fs = std::filesystem;

namespace {

void pretrain_log(const std::string& line) {
  std::cout << "[pretrain] " << line << std::endl;
}

struct CaptionedImages {
  torch::Tensor pixels;  // [N, 3, H, W] in [-1, 1]
  std::vector<std::string> captions;
};

std::string read_caption(const fs::path& image) {
  fs::path txt = image;
  txt.replace_extension(".txt");
  if (!fs::exists(txt)) return "";
  std::ifstream in(txt);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

CaptionedImages load_captioned_images(const fs::path& dir, int64_t max_images) {
  DL_CHECK(fs::is_directory(dir), "--data ", dir.string(), ": not a folder");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && io::is_image_file(e.path())) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (max_images > 0 && static_cast<int64_t>(files.size()) > max_images) files.resize(max_images);
  DL_CHECK(!files.empty(), "--data ", dir.string(), ": no images (png, jpg, bmp, webp)");
  CaptionedImages out;
  std::vector<torch::Tensor> pixels;
  for (const auto& f : files) {
    auto t = io::image_to_tensor(io::load_image(f));
    DL_CHECK(pixels.empty() || t.sizes() == pixels.front().sizes(), "--data ", f.string(), ": size ",
             t.size(2), "x", t.size(1), " differs from the first image's (pretraining needs one size)");
    pixels.push_back(t * 2 - 1);
    out.captions.push_back(read_caption(f));
  }
  out.pixels = torch::stack(pixels);
  return out;
}

uint64_t step_seed(uint64_t seed, int64_t step) {
  return seed * 6364136223846793005ull + static_cast<uint64_t>(step) * 1442695040888963407ull + 1;
}

// The data order: a permutation per epoch drawn from (seed, epoch), so any step's batch is known
// without replaying earlier steps.
class EpochOrder {
 public:
  EpochOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  std::vector<int64_t> batch(int64_t step, int64_t batch_size) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < batch_size; ++i) {
      const int64_t global = step * batch_size + i;
      const int64_t epoch = global / n_;
      if (epoch != epoch_) {
        auto gen = at::detail::createCPUGenerator(seed_ * 1000003ull + static_cast<uint64_t>(epoch) + 7);
        perm_ = torch::randperm(n_, gen, torch::kInt64);
        epoch_ = epoch;
      }
      out.push_back(perm_[global % n_].item<int64_t>());
    }
    return out;
  }

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  torch::Tensor perm_;
};

std::vector<std::pair<std::string, torch::Tensor>> owned_copies(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, t.detach().to(torch::kCPU).clone());
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, t] : nn::named_tensors(m)) out.emplace_back(name, t);
  return out;
}

std::vector<ParamGroup> trainable_groups(torch::nn::Module& m, double lr) {
  ParamGroup g;
  g.lr = lr;
  for (auto& p : m.named_parameters()) {
    p.value().set_requires_grad(true);
    g.params.emplace_back(p.key(), p.value());
  }
  m.train();
  return {g};
}

// The UNet and the text encoder trained together: one module, so checkpoints and the optimizer see both
// (names "unet.*" and "text_encoder.*").
struct UNetAndTextEncoder : torch::nn::Module {
  UNetAndTextEncoder(torch::nn::Module& unet, torch::nn::Module& text_encoder) {
    register_module("unet", unet.shared_from_this());
    register_module("text_encoder", text_encoder.shared_from_this());
  }
};

// What the stage trains and how one step's loss is computed; the loop around it is shared.
struct Stage {
  torch::nn::Module* module = nullptr;
  std::function<torch::Tensor(const std::vector<int64_t>& batch, at::Generator& gen)> loss;
};

io::Json fingerprint(const PretrainOptions& o) {
  io::Json f = {{"stage", o.stage},
                {"batch_size", o.batch_size},
                {"learning_rate", o.learning_rate},
                {"seed", o.seed},
                {"kl_weight", o.kl_weight},
                {"caption_dropout", o.caption_dropout},
                {"train_text_encoder", o.train_text_encoder},
                {"warmup_steps", o.warmup_steps},
                {"weight_decay", o.weight_decay},
                {"max_grad_norm", o.max_grad_norm},
                {"num_steps", o.num_steps},
                {"max_images", o.max_images}};
  // Added after the first checkpoints were written: only present when set, so those still resume.
  if (o.snr_gamma > 0) f["snr_gamma"] = o.snr_gamma;
  return f;
}

void save_checkpoint(checkpoint::CheckpointStore& store, int64_t step, const PretrainOptions& o,
                     const torch::nn::Module& module, const Optimizer& opt) {
  checkpoint::CheckpointContents c;
  c.add_tensors("model.safetensors", owned_copies(module_tensors(module)));
  c.add_tensors("optimizer.safetensors", owned_copies(opt.state_tensors()));
  io::Json state = {{"step", step}, {"optimizer_steps", opt.step_count()}, {"fingerprint", fingerprint(o)}};
  c.add_bytes("pretrain_state.json", state.dump(2) + "\n");
  auto r = store.commit(step, c);
  for (const auto& w : r.warnings) pretrain_log("warning: " + w);
  store.prune(static_cast<int>(o.checkpoints_total_limit));
  pretrain_log("checkpoint " + r.path.string());
}

std::optional<fs::path> resume_dir(const PretrainOptions& o, checkpoint::CheckpointStore& store) {
  const std::string& how = o.resume_from_checkpoint;
  if (how.empty() || how == "none") return std::nullopt;
  if (how == "latest") {
    auto latest = store.latest_valid();
    for (const auto& s : latest.skipped) pretrain_log("skipping " + s.path.string() + ": " + s.reason);
    if (!latest.latest) return std::nullopt;
    return latest.latest->path;
  }
  auto v = checkpoint::verify_checkpoint(how);
  DL_CHECK(v.ok, "--resume-from-checkpoint ", how, ": does not verify: ", v.reason);
  return fs::path(how);
}

int64_t restore(const fs::path& dir, const PretrainOptions& o, torch::nn::Module& module, Optimizer& opt) {
  auto state = io::read_json(dir / "pretrain_state.json");
  auto saved = state.at("fingerprint"), now = fingerprint(o);
  if (o.allow_schedule_change) saved.erase("num_steps"), now.erase("num_steps");
  DL_CHECK(saved == now, dir.string(), ": settings differ from the checkpoint's (",
           state.at("fingerprint").dump(), " vs ", fingerprint(o).dump(),
           "); use the same settings, a new --output-dir or --resume-from-checkpoint none");
  auto weights = io::safetensors::File::open(dir / "model.safetensors").load_all();
  {
    torch::NoGradGuard no_grad;
    nn::load_state_dict_strict(module, weights, (dir / "model.safetensors").string());
  }
  auto moments = io::safetensors::File::open(dir / "optimizer.safetensors").load_all();
  opt.load_state(moments, state.at("optimizer_steps").get<int64_t>(),
                 (dir / "optimizer.safetensors").string());
  return state.at("step").get<int64_t>();
}

// A trained part of the pipeline: its folder, weight file, weights and (when it changed) config.
struct TrainedComponent {
  std::string folder, weights_file;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  io::Json config;  // null: keep the copied config.json
};

// Copies the pipeline folder (no checkpoints), then writes the trained components' weights and configs.
void write_pipeline(const fs::path& from, const fs::path& to, const std::vector<TrainedComponent>& trained,
                    bool fp16) {
  const fs::path tmp = to.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  for (const auto& e : fs::directory_iterator(from)) {
    if (checkpoint::parse_checkpoint_dir_name(e.path().filename().string())) continue;
    fs::copy(e.path(), tmp / e.path().filename(), fs::copy_options::recursive);
  }
  for (const auto& c : trained) {
    if (!c.config.is_null()) io::write_file_durably(tmp / c.folder / "config.json", c.config.dump(2) + "\n");
    std::map<std::string, torch::Tensor> tensors(c.tensors.begin(), c.tensors.end());
    io::safetensors::save(tmp / c.folder / c.weights_file, tensors);
  }
  if (fp16) {
    for (const auto& e : fs::recursive_directory_iterator(tmp)) {
      if (e.path().extension() != ".safetensors") continue;
      auto tensors = io::safetensors::File::open(e.path()).load_all();
      std::map<std::string, torch::Tensor> half;
      for (auto& [name, t] : tensors)
        half[name] = t.is_floating_point() ? t.to(torch::kFloat16).contiguous() : t.clone();
      tensors.clear();
      io::safetensors::save(e.path(), half);
    }
  }
  fs::remove_all(to);
  fs::rename(tmp, to);
}

torch::Tensor encode_all(vae::AutoencoderKL& vae, const torch::Tensor& pixels, bool want_std,
                         torch::Tensor* std_out) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> means, stds;
  for (int64_t i = 0; i < pixels.size(0); i += 64) {
    auto post = vae->encode(pixels.slice(0, i, std::min<int64_t>(i + 64, pixels.size(0))));
    means.push_back(post.mean);
    if (want_std) stds.push_back(post.std);
  }
  if (want_std) *std_out = torch::cat(stds);
  return torch::cat(means);
}

// Originals above their reconstructions (posterior means), 8 images side by side: what the VAE keeps.
void save_reconstructions(vae::AutoencoderKL& vae, const torch::Tensor& pixels, const fs::path& path) {
  torch::NoGradGuard no_grad;
  auto x = pixels.slice(0, 0, std::min<int64_t>(8, pixels.size(0)));
  auto rec = vae->decode(vae->encode(x).mean).clamp(-1, 1);
  auto row = [](const torch::Tensor& batch) { return torch::cat(batch.unbind(0), 2); };  // [3, H, 8W]
  auto grid = torch::cat({row(x), row(rec)}, 1);
  io::save_png(path, io::tensor_to_image((grid + 1) / 2));
}

}  // namespace

int run_pretrain(const PretrainOptions& o) {
  DL_CHECK(o.stage == "vae" || o.stage == "unet", "--stage: expected vae or unet, got '", o.stage, "'");
  DL_CHECK(o.num_steps > 0, "--num-steps must be > 0, got ", o.num_steps);
  DL_CHECK(o.batch_size > 0, "--batch-size must be > 0, got ", o.batch_size);
  DL_CHECK(o.snr_gamma >= 0, "--snr-gamma must not be negative, got ", o.snr_gamma);
  DL_CHECK(o.save_dtype == "fp32" || o.save_dtype == "fp16", "--save-dtype: expected fp32 or fp16, got '",
           o.save_dtype, "'");
  DL_CHECK(fs::exists(o.model / "model_index.json"), "--model ", o.model.string(),
           ": no model_index.json (expected a diffusers pipeline folder)");
  DL_CHECK(!o.output_dir.empty(), "--output-dir is required");
  auto lock = checkpoint::OutputLock::acquire(o.output_dir);
  checkpoint::CheckpointStore store(o.output_dir);
  store.cleanup_temporaries();

  auto data = load_captioned_images(o.data, o.max_images);
  const int64_t n = data.pixels.size(0);
  pretrain_log("stage " + o.stage + ": " + std::to_string(n) + " images of " +
               std::to_string(data.pixels.size(3)) + "x" + std::to_string(data.pixels.size(2)));

  pipeline::LoadOptions load;
  auto bundle = pipeline::ModelBundle::load(o.model, load);
  Stage stage;
  // Held for the stage's loss closures.
  torch::Tensor latent_mean, latent_std, caption_ids, caption_embeds;
  std::shared_ptr<UNetAndTextEncoder> unet_and_text;
  std::vector<int64_t> caption_index;
  std::unique_ptr<schedulers::DDPMScheduler> ddpm;

  if (o.stage == "vae") {
    auto vae = bundle.vae;
    stage.module = vae.get();
    const double kl_weight = o.kl_weight;
    stage.loss = [vae, &data, kl_weight](const std::vector<int64_t>& batch, at::Generator& gen) mutable {
      auto x = data.pixels.index_select(0, torch::tensor(batch, torch::kInt64));
      auto post = vae->encode(x);
      auto eps = torch::randn(post.mean.sizes(), gen, post.mean.options());
      auto rec = vae->decode(post.sample_with(eps));
      auto kl_per_element = post.kl().mean() / static_cast<double>(post.mean[0].numel());
      return torch::mse_loss(rec, x) + kl_weight * kl_per_element;
    };
  } else {
    auto unet = bundle.unet;
    stage.module = unet.get();
    latent_mean = encode_all(bundle.vae, data.pixels, true, &latent_std);
    const double scaling = bundle.vae->config().scaling_factor;
    pretrain_log("latents " + std::to_string(latent_mean.size(1)) + "x" +
                 std::to_string(latent_mean.size(2)) + "x" + std::to_string(latent_mean.size(3)) +
                 ", scaled std " + std::to_string((latent_mean * scaling).std().item<double>()));
    // Each distinct caption tokenized once; the empty prompt is the last row.
    std::map<std::string, int64_t> ids;
    std::vector<std::string> unique;
    for (const auto& c : data.captions) {
      auto [it, added] = ids.emplace(c, static_cast<int64_t>(unique.size()));
      if (added) unique.push_back(c);
      caption_index.push_back(it->second);
    }
    pretrain_log(std::to_string(unique.size()) + " distinct captions");
    unique.push_back("");
    caption_ids = bundle.text.tokenizer->encode_batch(unique);
    if (o.train_text_encoder) {
      unet_and_text = std::make_shared<UNetAndTextEncoder>(*unet, *bundle.text.text_encoder);
      stage.module = unet_and_text.get();
    } else {
      // Frozen: every caption through the text encoder once.
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> parts;
      for (int64_t i = 0; i < caption_ids.size(0); i += 64)
        parts.push_back(text::encode_prompt_ids(bundle.text, caption_ids.slice(0, i, i + 64), torch::Tensor())
                            .prompt_embeds);
      caption_embeds = torch::cat(parts);
    }
    ddpm = std::make_unique<schedulers::DDPMScheduler>(
        schedulers::DDPMScheduler::from_file(bundle.scheduler_config_path));
    auto* sched = ddpm.get();
    const double dropout = o.caption_dropout;
    const int64_t empty_row = caption_ids.size(0) - 1;
    const auto& text = bundle.text;
    const bool train_text = o.train_text_encoder;
    const double snr_gamma = o.snr_gamma;
    if (snr_gamma > 0) min_snr_weights(torch::ones({1}), snr_gamma, sched->prediction_type());
    stage.loss = [unet, sched, scaling, dropout, empty_row, text, train_text, snr_gamma, &latent_mean,
                  &latent_std, &caption_ids, &caption_embeds,
                  &caption_index](const std::vector<int64_t>& batch, at::Generator& gen) mutable {
      auto idx = torch::tensor(batch, torch::kInt64);
      auto mean = latent_mean.index_select(0, idx), std = latent_std.index_select(0, idx);
      auto eps = torch::randn(mean.sizes(), gen, mean.options());
      auto latents = (mean + std * eps) * scaling;
      auto noise = torch::randn(latents.sizes(), gen, latents.options());
      auto timesteps = torch::randint(0, sched->num_train_timesteps(), {static_cast<int64_t>(batch.size())},
                                      gen, torch::kInt64);
      auto drop = torch::rand({static_cast<int64_t>(batch.size())}, gen);
      std::vector<int64_t> rows;
      for (size_t i = 0; i < batch.size(); ++i)
        rows.push_back(drop[i].item<double>() < dropout ? empty_row : caption_index[batch[i]]);
      auto row_index = torch::tensor(rows, torch::kInt64);
      auto embeds =
          train_text ? text::encode_prompt_ids(text, caption_ids.index_select(0, row_index), torch::Tensor())
                           .prompt_embeds
                     : caption_embeds.index_select(0, row_index);
      auto noisy = sched->add_noise(latents, noise, timesteps);
      auto pred = unet->forward(noisy, timesteps, embeds);
      auto target = sched->training_target(latents, noise, timesteps);
      if (snr_gamma <= 0) return torch::mse_loss(pred.to(torch::kFloat32), target);
      auto per_sample = (pred.to(torch::kFloat32) - target).pow(2).mean({1, 2, 3});
      return (per_sample * min_snr_weights(sched->snr(timesteps), snr_gamma, sched->prediction_type()))
          .mean();
    };
  }

  AdamWOptions adam;
  adam.weight_decay = o.weight_decay;
  AdamW opt(trainable_groups(*stage.module, o.learning_rate), adam);
  LRScheduleOptions schedule;
  schedule.name = "cosine";
  schedule.warmup_steps = o.warmup_steps;
  schedule.total_steps = o.num_steps;

  int64_t step = 0;
  if (auto dir = resume_dir(o, store)) {
    step = restore(*dir, o, *stage.module, opt);
    pretrain_log("resumed from " + dir->string() + " at step " + std::to_string(step));
  }
  pretrain_log(std::to_string(nn::count_parameters(*stage.module)) + " trainable parameters, " +
               std::to_string(o.num_steps - step) + " steps to go");

  const stop::StopSources stop_sources("", "");
  // Test hook, as `train`'s: behave as if SIGTERM arrived during step N.
  const char* stop_at = std::getenv("DREAMLORA_TEST_STOP_AT_STEP");
  const int64_t test_stop_step = stop_at ? std::atoll(stop_at) : -1;
  EpochOrder order(n, o.seed);
  double loss_sum = 0;
  int64_t loss_count = 0;
  auto window_start = std::chrono::steady_clock::now();
  int64_t last_checkpoint = step;
  while (step < o.num_steps) {
    if (stop_sources.requested()) break;
    auto gen = at::detail::createCPUGenerator(step_seed(o.seed, step));
    auto loss = stage.loss(order.batch(step, o.batch_size), gen);
    loss.backward();
    if (o.max_grad_norm > 0) opt.clip_grad_norm(o.max_grad_norm);
    opt.step(lr_multiplier(schedule, o.learning_rate, step));
    opt.zero_grad();
    ++step;
    if (step == test_stop_step) stop::request_stop("DREAMLORA_TEST_STOP_AT_STEP");
    loss_sum += loss.item<double>();
    ++loss_count;
    if (step % o.log_every == 0 || step == o.num_steps) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      std::ostringstream line;
      line << "step " << step << "/" << o.num_steps << " loss " << loss_sum / loss_count << " ("
           << secs / loss_count << " s/step)";
      pretrain_log(line.str());
      loss_sum = 0;
      loss_count = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if (o.checkpointing_steps > 0 && step % o.checkpointing_steps == 0) {
      save_checkpoint(store, step, o, *stage.module, opt);
      last_checkpoint = step;
    }
  }
  if (step < o.num_steps) {
    if (step != last_checkpoint) save_checkpoint(store, step, o, *stage.module, opt);
    pretrain_log("stop requested (" + stop::stop_reason_text() + "): exiting with status " +
                 std::to_string(stop::kExitStoppedEarly) + " (run the same command to resume)");
    return stop::kExitStoppedEarly;
  }

  // The final state is a checkpoint too: running the same command again only rewrites the pipeline.
  if (step != last_checkpoint) save_checkpoint(store, step, o, *stage.module, opt);
  stage.module->eval();
  const bool fp16 = o.save_dtype == "fp16";
  if (o.stage == "vae") {
    auto cfg = bundle.vae->config().to_json();
    // scaling_factor = 1 / std of the latents (as SD's 0.18215), so the UNet sees unit-variance latents.
    torch::Tensor stds;
    auto sample = data.pixels.slice(0, 0, std::min<int64_t>(n, 512));
    auto means = encode_all(bundle.vae, sample, true, &stds);
    auto gen = at::detail::createCPUGenerator(o.seed + 99);
    auto z = means + stds * torch::randn(means.sizes(), gen, means.options());
    const double scaling = 1.0 / z.std().item<double>();
    cfg["scaling_factor"] = scaling;
    save_reconstructions(bundle.vae, data.pixels, o.output_dir / "reconstructions.png");
    pretrain_log("scaling_factor " + std::to_string(scaling));
    write_pipeline(o.model, o.output_dir / "pipeline",
                   {{"vae", "diffusion_pytorch_model.safetensors", module_tensors(*bundle.vae), cfg}}, fp16);
  } else {
    std::vector<TrainedComponent> trained = {{"unet", "diffusion_pytorch_model.safetensors",
                                              module_tensors(*bundle.unet), bundle.unet->config.to_json()}};
    if (o.train_text_encoder)
      trained.push_back({"text_encoder", "model.safetensors", module_tensors(*bundle.text.text_encoder), {}});
    write_pipeline(o.model, o.output_dir / "pipeline", trained, fp16);
  }
  pretrain_log("wrote " + (o.output_dir / "pipeline").string());
  return 0;
}

}  // namespace dreamlora::train
