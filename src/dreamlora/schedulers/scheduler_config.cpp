// SchedulerConfig: per-class defaults, parsing and save form. See scheduler_config.h.
#include "dreamlora/schedulers/scheduler_config.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace dreamlora::schedulers {

namespace {

// The __init__ keyword arguments of each class (diffusers 0.27.2).
const std::set<std::string>& keys_of(const std::string& cls) {
  static const std::set<std::string> common = {
      "num_train_timesteps", "beta_start",       "beta_end",     "beta_schedule",         "trained_betas",
      "prediction_type",     "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"};
  auto with = [&](std::initializer_list<const char*> extra) {
    std::set<std::string> s = common;
    for (const char* k : extra) s.insert(k);
    return s;
  };
  static const std::set<std::string> ddpm =
      with({"variance_type", "clip_sample", "thresholding", "dynamic_thresholding_ratio", "clip_sample_range",
            "sample_max_value"});
  static const std::set<std::string> ddim =
      with({"clip_sample", "set_alpha_to_one", "thresholding", "dynamic_thresholding_ratio",
            "clip_sample_range", "sample_max_value"});
  static const std::set<std::string> euler =
      with({"interpolation_type", "use_karras_sigmas", "sigma_min", "sigma_max", "timestep_type"});
  static const std::set<std::string> euler_a = with({});
  static const std::set<std::string> dpm =
      with({"solver_order", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
            "algorithm_type", "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas",
            "use_lu_lambdas", "final_sigmas_type", "lambda_min_clipped", "variance_type"});
  if (cls == kDDPM) return ddpm;
  if (cls == kDDIM) return ddim;
  if (cls == kEuler) return euler;
  if (cls == kEulerAncestral) return euler_a;
  if (cls == kDPMSolverMultistep) return dpm;
  fail(str("scheduler class '", cls, "' is not implemented (supported: ", kDDPM, ", ", kDDIM, ", ", kEuler,
           ", ", kEulerAncestral, ", ", kDPMSolverMultistep, ")"));
}

void require_one_of(const std::string& source, const std::string& key, const std::string& value,
                    std::initializer_list<const char*> allowed) {
  for (const char* a : allowed) {
    if (value == a) return;
  }
  std::string list;
  for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  fail(str(source, ": unsupported value '", value, "' for key '", key, "' (supported: ", list, ")"));
}

void validate(const SchedulerConfig& c) {
  const auto& s = c.source;
  const auto& keys = keys_of(c.target_class);
  auto takes = [&](const char* k) { return keys.count(k) > 0; };
  DL_CHECK(c.num_train_timesteps > 1, s, ": num_train_timesteps must be > 1, got ", c.num_train_timesteps);
  if (c.trained_betas) {
    DL_CHECK(static_cast<int64_t>(c.trained_betas->size()) == c.num_train_timesteps, s,
             ": trained_betas has ", c.trained_betas->size(), " values but num_train_timesteps is ",
             c.num_train_timesteps);
  } else if (c.target_class == kDDPM) {
    require_one_of(s, "beta_schedule", c.beta_schedule,
                   {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"});
  } else {
    require_one_of(s, "beta_schedule", c.beta_schedule, {"linear", "scaled_linear", "squaredcos_cap_v2"});
  }
  require_one_of(s, "prediction_type", c.prediction_type, {"epsilon", "v_prediction", "sample"});
  if (c.target_class == kEulerAncestral) {
    // diffusers raises NotImplementedError for "sample" in EulerAncestralDiscreteScheduler.step.
    require_one_of(s, "prediction_type", c.prediction_type, {"epsilon", "v_prediction"});
  }
  require_one_of(s, "timestep_spacing", c.timestep_spacing, {"leading", "trailing", "linspace"});
  DL_CHECK(!(takes("thresholding") && c.thresholding), s,
           ": key 'thresholding' = true (dynamic thresholding) is not supported by dreamlora");
  if (c.target_class == kDDPM && c.variance_type) {
    require_one_of(s, "variance_type", *c.variance_type, {"fixed_small", "fixed_small_log", "fixed_large"});
  }
  if (takes("interpolation_type")) require_one_of(s, "interpolation_type", c.interpolation_type, {"linear"});
  if (takes("timestep_type")) require_one_of(s, "timestep_type", c.timestep_type, {"discrete"});
  if (c.target_class == kDPMSolverMultistep) {
    require_one_of(s, "algorithm_type", c.algorithm_type, {"dpmsolver++"});
    require_one_of(s, "solver_type", c.solver_type, {"midpoint", "heun"});
    require_one_of(s, "final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"});
    DL_CHECK(c.solver_order == 1 || c.solver_order == 2, s, ": unsupported value ", c.solver_order,
             " for key 'solver_order' (supported: 1, 2)");
    DL_CHECK(!c.use_lu_lambdas, s, ": key 'use_lu_lambdas' = true is not supported by dreamlora");
    DL_CHECK(!(c.variance_type && (*c.variance_type == "learned" || *c.variance_type == "learned_range")), s,
             ": key 'variance_type' = '", *c.variance_type, "' is not supported by dreamlora");
  }
}

}  // namespace

SchedulerConfig SchedulerConfig::defaults_for(const std::string& target_class) {
  keys_of(target_class);  // rejects unknown classes
  SchedulerConfig c;
  c.target_class = target_class;
  if (target_class == kEuler || target_class == kEulerAncestral || target_class == kDPMSolverMultistep) {
    c.timestep_spacing = "linspace";
  }
  if (target_class == kDPMSolverMultistep) c.variance_type.reset();
  return c;
}

SchedulerConfig SchedulerConfig::from_json(const io::Json& json, const std::string& target_class,
                                           const std::string& source) {
  DL_CHECK(json.is_object(), source, ": expected a JSON object");
  SchedulerConfig c = defaults_for(target_class);
  c.source = source;
  const auto& keys = keys_of(target_class);

  // Keys the saving class recorded as its own defaults fall back to the target's defaults
  // (diffusers' `_use_default_values`); keys the target does not take are ignored.
  io::Json filtered = io::Json::object();
  std::set<std::string> use_defaults;
  if (json.contains("_use_default_values") && json["_use_default_values"].is_array()) {
    for (const auto& k : json["_use_default_values"]) {
      if (k.is_string()) use_defaults.insert(k.get<std::string>());
    }
  }
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (keys.count(it.key()) && !use_defaults.count(it.key())) filtered[it.key()] = it.value();
  }
  io::ConfigReader r(filtered, source);

  c.num_train_timesteps = r.get<int64_t>("num_train_timesteps", c.num_train_timesteps);
  c.beta_start = r.get<double>("beta_start", c.beta_start);
  c.beta_end = r.get<double>("beta_end", c.beta_end);
  c.beta_schedule = r.get<std::string>("beta_schedule", c.beta_schedule);
  if (r.has("trained_betas")) c.trained_betas = r.get<std::vector<double>>("trained_betas", {});
  c.prediction_type = r.get<std::string>("prediction_type", c.prediction_type);
  c.timestep_spacing = r.get<std::string>("timestep_spacing", c.timestep_spacing);
  c.steps_offset = r.get<int64_t>("steps_offset", c.steps_offset);
  c.rescale_betas_zero_snr = r.get<bool>("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  c.clip_sample = r.get<bool>("clip_sample", c.clip_sample);
  c.clip_sample_range = r.get<double>("clip_sample_range", c.clip_sample_range);
  c.thresholding = r.get<bool>("thresholding", c.thresholding);
  c.set_alpha_to_one = r.get<bool>("set_alpha_to_one", c.set_alpha_to_one);
  if (r.has("variance_type")) c.variance_type = r.get<std::string>("variance_type", "");
  c.interpolation_type = r.get<std::string>("interpolation_type", c.interpolation_type);
  c.use_karras_sigmas = r.get<bool>("use_karras_sigmas", c.use_karras_sigmas);
  if (r.has("sigma_min")) c.sigma_min = r.get<double>("sigma_min", 0.0);
  if (r.has("sigma_max")) c.sigma_max = r.get<double>("sigma_max", 0.0);
  c.timestep_type = r.get<std::string>("timestep_type", c.timestep_type);
  c.solver_order = r.get<int64_t>("solver_order", c.solver_order);
  c.algorithm_type = r.get<std::string>("algorithm_type", c.algorithm_type);
  c.solver_type = r.get<std::string>("solver_type", c.solver_type);
  // diffusers maps the names of its other solvers onto these (register_to_config in __init__).
  if (c.algorithm_type == "deis") c.algorithm_type = "dpmsolver++";
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2")
    c.solver_type = "midpoint";
  c.lower_order_final = r.get<bool>("lower_order_final", c.lower_order_final);
  c.euler_at_final = r.get<bool>("euler_at_final", c.euler_at_final);
  c.use_lu_lambdas = r.get<bool>("use_lu_lambdas", c.use_lu_lambdas);
  c.final_sigmas_type = r.get<std::string>("final_sigmas_type", c.final_sigmas_type);
  c.lambda_min_clipped = r.get<double>("lambda_min_clipped", c.lambda_min_clipped);
  validate(c);
  return c;
}

SchedulerConfig SchedulerConfig::from_file(const std::filesystem::path& path,
                                           const std::string& target_class) {
  return from_json(io::read_json(path), target_class, path.string());
}

io::Json SchedulerConfig::to_json() const {
  io::Json all = {{"num_train_timesteps", num_train_timesteps},
                  {"beta_start", beta_start},
                  {"beta_end", beta_end},
                  {"beta_schedule", beta_schedule},
                  {"trained_betas", trained_betas ? io::Json(*trained_betas) : io::Json(nullptr)},
                  {"prediction_type", prediction_type},
                  {"timestep_spacing", timestep_spacing},
                  {"steps_offset", steps_offset},
                  {"rescale_betas_zero_snr", rescale_betas_zero_snr},
                  {"variance_type", variance_type ? io::Json(*variance_type) : io::Json(nullptr)},
                  {"clip_sample", clip_sample},
                  {"thresholding", thresholding},
                  {"dynamic_thresholding_ratio", 0.995},
                  {"clip_sample_range", clip_sample_range},
                  {"sample_max_value", 1.0},
                  {"set_alpha_to_one", set_alpha_to_one},
                  {"interpolation_type", interpolation_type},
                  {"use_karras_sigmas", use_karras_sigmas},
                  {"sigma_min", sigma_min ? io::Json(*sigma_min) : io::Json(nullptr)},
                  {"sigma_max", sigma_max ? io::Json(*sigma_max) : io::Json(nullptr)},
                  {"timestep_type", timestep_type},
                  {"solver_order", solver_order},
                  {"algorithm_type", algorithm_type},
                  {"solver_type", solver_type},
                  {"lower_order_final", lower_order_final},
                  {"euler_at_final", euler_at_final},
                  {"use_lu_lambdas", use_lu_lambdas},
                  {"final_sigmas_type", final_sigmas_type},
                  // JSON has no -inf; diffusers writes Python's -Infinity, which nlohmann cannot read back.
                  {"lambda_min_clipped",
                   std::isinf(lambda_min_clipped) ? io::Json(-1e30) : io::Json(lambda_min_clipped)}};
  io::Json out = io::Json::object();
  out["_class_name"] = target_class;
  for (const auto& k : keys_of(target_class)) out[k] = all.at(k);
  return out;
}

}  // namespace dreamlora::schedulers
