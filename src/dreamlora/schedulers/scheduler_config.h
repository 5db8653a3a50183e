// scheduler_config.json parsed for one target scheduler class, with that class's Python defaults.
// A pipeline's config usually names another class (PNDMScheduler for SD1): as diffusers' from_config,
// keys the target class does not take are ignored and missing keys get the target's defaults.
#pragma once

#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "dreamlora/io/json.h"

namespace dreamlora::schedulers {

// diffusers class names this project implements.
inline constexpr const char* kDDPM = "DDPMScheduler";
inline constexpr const char* kDDIM = "DDIMScheduler";
inline constexpr const char* kEuler = "EulerDiscreteScheduler";
inline constexpr const char* kEulerAncestral = "EulerAncestralDiscreteScheduler";
inline constexpr const char* kDPMSolverMultistep = "DPMSolverMultistepScheduler";

// The union of the keys of the implemented classes. Fields a class does not take keep their
// defaults and are not read by it.
struct SchedulerConfig {
  std::string target_class = kDDPM;   // which class's defaults and key set this was parsed for
  std::string source = "<defaults>";  // file name, for error messages

  // shared
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // linear | scaled_linear | squaredcos_cap_v2 (| sigmoid: DDPM)
  std::optional<std::vector<double>> trained_betas;
  std::string prediction_type = "epsilon";   // epsilon | v_prediction | sample
  std::string timestep_spacing = "leading";  // leading | trailing | linspace (class default differs)
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;

  // DDPM / DDIM
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool thresholding = false;     // dynamic thresholding is not implemented: true is an error
  bool set_alpha_to_one = true;  // DDIM
  std::optional<std::string> variance_type = std::string("fixed_small");  // DDPM (DPM-Solver: null)

  // Euler
  std::string interpolation_type = "linear";
  bool use_karras_sigmas = false;  // Euler, DPM-Solver
  std::optional<double> sigma_min, sigma_max;
  std::string timestep_type = "discrete";

  // DPM-Solver multistep
  int64_t solver_order = 2;
  std::string algorithm_type = "dpmsolver++";
  std::string solver_type = "midpoint";
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_lu_lambdas = false;
  std::string final_sigmas_type = "zero";  // zero | sigma_min
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();

  // Defaults of target_class (one of the k* names above); unknown classes are an error.
  static SchedulerConfig defaults_for(const std::string& target_class);
  // Parses json for target_class. Errors name source and the key for unsupported values.
  static SchedulerConfig from_json(const io::Json& json, const std::string& target_class,
                                   const std::string& source = "scheduler_config.json");
  static SchedulerConfig from_file(const std::filesystem::path& path, const std::string& target_class);
  // The keys target_class takes, with `_class_name` = target_class (diffusers' save_config form).
  io::Json to_json() const;
};

}  // namespace dreamlora::schedulers
