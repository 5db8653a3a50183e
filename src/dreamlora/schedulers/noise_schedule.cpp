// Shared noise tables and numpy-compatible helpers: see noise_schedule.h.
#include "dreamlora/schedulers/noise_schedule.h"

#include <torch/torch.h>

#include <algorithm>
#include <cfenv>
#include <cmath>

namespace dreamlora::schedulers {

namespace {
// a * b + c with two roundings, as numpy's C loops compute it (no fused multiply-add, which compilers
// may otherwise emit on targets that have it).
double mul_add_unfused(double a, double b, double c) {
  volatile double product = a * b;
  return product + c;
}
}  // namespace

torch::Tensor betas_for_alpha_bar(int64_t n, double max_beta) {
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2.0); };
  std::vector<double> betas(n);
  for (int64_t i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(n);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
    betas[i] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta);
  }
  return to_float_tensor(betas);
}

torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  auto alphas = 1.0 - betas;
  auto alphas_cumprod = torch::cumprod(alphas, 0);
  auto alphas_bar_sqrt = alphas_cumprod.sqrt();
  auto sqrt_0 = alphas_bar_sqrt[0].clone();
  auto sqrt_T = alphas_bar_sqrt[-1].clone();
  // Shift so the last timestep has zero SNR, then scale so the first keeps its value.
  alphas_bar_sqrt -= sqrt_T;
  alphas_bar_sqrt *= sqrt_0 / (sqrt_0 - sqrt_T);
  auto alphas_bar = alphas_bar_sqrt.pow(2);
  auto n = alphas_bar.size(0);
  auto ratios = alphas_bar.slice(0, 1, n) / alphas_bar.slice(0, 0, n - 1);  // revert cumprod
  alphas = torch::cat({alphas_bar.slice(0, 0, 1), ratios});
  return 1 - alphas;
}

torch::Tensor make_betas(const SchedulerConfig& c) {
  const int64_t T = c.num_train_timesteps;
  torch::Tensor betas;
  if (c.trained_betas) {
    betas = to_float_tensor(*c.trained_betas);
  } else if (c.beta_schedule == "linear") {
    betas = torch::linspace(c.beta_start, c.beta_end, T, torch::kFloat32);
  } else if (c.beta_schedule == "scaled_linear") {
    // Python's `x ** 0.5` on floats is libm pow, not sqrt.
    betas =
        torch::linspace(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), T, torch::kFloat32).pow(2);
  } else if (c.beta_schedule == "squaredcos_cap_v2") {
    betas = betas_for_alpha_bar(T);
  } else if (c.beta_schedule == "sigmoid") {
    betas = torch::sigmoid(torch::linspace(-6, 6, T, torch::kFloat32)) * (c.beta_end - c.beta_start) +
            c.beta_start;
  } else {
    fail(str(c.source, ": unsupported value '", c.beta_schedule, "' for key 'beta_schedule'"));
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

torch::Tensor alphas_cumprod_from_betas(const torch::Tensor& betas) {
  return torch::cumprod(1.0 - betas, 0);
}

torch::Tensor sigmas_from_alphas_cumprod(const torch::Tensor& alphas_cumprod) {
  return ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5);
}

torch::Tensor randn_tensor(at::IntArrayRef shape, c10::optional<at::Generator> generator,
                           const torch::TensorOptions& options) {
  if (generator.has_value() && generator->device().is_cpu() && !options.device().is_cpu()) {
    return torch::randn(shape, generator, options.device(torch::kCPU)).to(options.device());
  }
  return torch::randn(shape, generator, options);
}

std::vector<double> to_doubles(const torch::Tensor& t) {
  auto d = t.detach().to(torch::kCPU).to(torch::kFloat64).contiguous().reshape({-1});
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

torch::Tensor to_float_tensor(const std::vector<double>& v) {
  return torch::tensor(v, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor to_long_tensor(const std::vector<double>& v) {
  std::vector<int64_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<int64_t>(v[i]);  // astype: toward zero
  return torch::tensor(out, torch::kInt64);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  const auto ramp = np::linspace(0, 1, n);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(n);
  for (int64_t i = 0; i < n; ++i) {
    sigmas[i] = std::pow(mul_add_unfused(ramp[i], min_inv_rho - max_inv_rho, max_inv_rho), rho);
  }
  return sigmas;
}

double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  // numpy 1.x subtracts the float64 scalar from the float32 array in float32: compare there.
  const float log_sigma_f = static_cast<float>(log_sigma);
  int64_t low_idx = 0;  // argmax of the cumsum of (dists >= 0): the last index with log_sigmas <= log_sigma
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma_f - static_cast<float>(log_sigmas[i]) >= 0.0f) low_idx = i;
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const double low = log_sigmas[low_idx], high = log_sigmas[high_idx];
  double w = (low - log_sigma) / (low - high);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(high_idx);
}

namespace np {

std::vector<double> linspace(double start, double stop, int64_t num) {
  DL_CHECK(num >= 0, "linspace: num must be >= 0, got ", num);
  std::vector<double> y(num);
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    for (int64_t i = 0; i < num; ++i) {
      double v = step == 0 ? static_cast<double>(i) / static_cast<double>(div) * delta
                           : static_cast<double>(i) * step;
      y[i] = v + start;
    }
    y[num - 1] = stop;
  } else {
    for (int64_t i = 0; i < num; ++i) y[i] = static_cast<double>(i) * delta + start;
  }
  return y;
}

std::vector<double> arange(double start, double stop, double step) {
  DL_CHECK(step != 0, "arange: step must be non-zero");
  const double len_f = std::ceil((stop - start) / step);
  const int64_t length = len_f > 0 ? static_cast<int64_t>(len_f) : 0;
  std::vector<double> out(length);
  if (length == 0) return out;
  out[0] = start;
  if (length == 1) return out;
  out[1] = start + step;
  const double delta = out[1] - out[0];
  for (int64_t i = 2; i < length; ++i) out[i] = mul_add_unfused(static_cast<double>(i), delta, start);
  return out;
}

double round(double x) {
  // nearbyint honours the current rounding mode, which is round-to-nearest-even unless changed.
  return std::nearbyint(x);
}

std::vector<double> interp(const std::vector<double>& x, const std::vector<double>& fp) {
  const int64_t n = static_cast<int64_t>(fp.size());
  DL_CHECK(n >= 1, "interp: empty table");
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double xv = x[i];
    if (std::isnan(xv)) {
      out[i] = xv;
    } else if (xv < 0) {
      out[i] = fp[0];
    } else if (xv >= static_cast<double>(n - 1)) {
      out[i] = fp[n - 1];
    } else {
      const auto j = static_cast<int64_t>(std::floor(xv));
      if (static_cast<double>(j) == xv) {
        out[i] = fp[j];
      } else {
        const double slope = (fp[j + 1] - fp[j]) / 1.0;  // xp[j+1] - xp[j] == 1
        out[i] = mul_add_unfused(slope, xv - static_cast<double>(j), fp[j]);
      }
    }
  }
  return out;
}

}  // namespace np

}  // namespace dreamlora::schedulers
