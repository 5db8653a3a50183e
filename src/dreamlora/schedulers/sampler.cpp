// Sampler base state and the make_sampler factory: see sampler.h.
#include "dreamlora/schedulers/sampler.h"

#include <torch/torch.h>

#include "dreamlora/schedulers/ddim.h"
#include "dreamlora/schedulers/dpm_solver.h"
#include "dreamlora/schedulers/euler.h"
#include "dreamlora/schedulers/noise_schedule.h"

namespace dreamlora::schedulers {

Sampler::Sampler(const SchedulerConfig& config) : config_(config) {
  betas_ = make_betas(config_);
  alphas_cumprod_ = alphas_cumprod_from_betas(betas_);
  // Sigma-space samplers cap the last alpha so the terminal sigma stays finite (diffusers does the
  // same in Euler, Euler ancestral and DPM-Solver; DDIM keeps the exact zero).
  if (config_.rescale_betas_zero_snr && config_.target_class != kDDIM) {
    alphas_cumprod_[-1] = std::pow(2.0, -24);
  }
}

int64_t Sampler::index_for_timestep(double timestep, bool last_if_missing) const {
  // Compare in the schedule's own dtype (float32 for Euler, int64 otherwise).
  auto target = torch::tensor(timestep, torch::kFloat64).to(timesteps_.scalar_type());
  auto matches = (timesteps_ == target).nonzero();  // [k, 1]
  const int64_t k = matches.size(0);
  if (k == 0) {
    DL_CHECK(last_if_missing, class_name(), ": timestep ", timestep,
             " is not one of the scheduled timesteps (pass values from timesteps())");
    return timesteps_.size(0) - 1;
  }
  // A timestep that repeats (Karras schedules) starts at its second occurrence, as diffusers.
  return matches[k > 1 ? 1 : 0][0].item<int64_t>();
}

namespace {
struct SamplerName {
  const char* name;
  const char* class_name;
  bool karras;
};
const std::vector<SamplerName>& known_names() {
  static const std::vector<SamplerName> names = {
      {"ddim", kDDIM, false},
      {"euler", kEuler, false},
      {"euler-karras", kEuler, true},
      {"euler-a", kEulerAncestral, false},
      {"dpmpp-2m", kDPMSolverMultistep, false},
      {"dpmpp-2m-karras", kDPMSolverMultistep, true},
  };
  return names;
}
}  // namespace

std::vector<std::string> sampler_names() {
  std::vector<std::string> out;
  for (const auto& n : known_names()) out.emplace_back(n.name);
  return out;
}

std::unique_ptr<Sampler> make_sampler(const std::string& name, const io::Json& config_json,
                                      const std::string& source) {
  std::string cls;
  bool karras = false;
  for (const auto& n : known_names()) {
    if (name == n.name || name == n.class_name) {
      cls = n.class_name;
      karras = karras || n.karras;
      break;
    }
  }
  if (cls.empty()) {
    std::string list;
    for (const auto& n : sampler_names()) list += (list.empty() ? "" : ", ") + n;
    fail(str("unknown sampler '", name, "' (known: ", list, ")"));
  }
  auto config = SchedulerConfig::from_json(config_json, cls, source);
  if (karras) config.use_karras_sigmas = true;
  if (cls == kDDIM) return std::make_unique<DDIMScheduler>(config);
  if (cls == kEuler) return std::make_unique<EulerDiscreteScheduler>(config);
  if (cls == kEulerAncestral) return std::make_unique<EulerAncestralDiscreteScheduler>(config);
  return std::make_unique<DPMSolverMultistepScheduler>(config);
}

std::unique_ptr<Sampler> make_sampler(const std::string& name, const std::filesystem::path& config_file) {
  return make_sampler(name, io::read_json(config_file), config_file.string());
}

}  // namespace dreamlora::schedulers
