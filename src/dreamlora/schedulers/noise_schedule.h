// Beta / alpha / sigma tables shared by every scheduler, computed with the same float32 torch ops in
// the same order as diffusers, plus the numpy routines diffusers' set_timesteps relies on (linspace,
// float arange, round-half-to-even, interp) reproduced in double so timesteps and sigmas match bit for bit.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <vector>

#include "dreamlora/schedulers/scheduler_config.h"

namespace dreamlora::schedulers {

// trained_betas, or beta_schedule from beta_start/beta_end, then rescale_betas_zero_snr. [T] float32
torch::Tensor make_betas(const SchedulerConfig& config);
// diffusers' betas_for_alpha_bar (cosine, "squaredcos_cap_v2"): python-float math, then float32. [T]
torch::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta = 0.999);
// diffusers' rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1). [T] -> [T]
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas);
// cumprod(1 - betas). [T] float32
torch::Tensor alphas_cumprod_from_betas(const torch::Tensor& betas);
// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, ascending in t. [T] float32
torch::Tensor sigmas_from_alphas_cumprod(const torch::Tensor& alphas_cumprod);

// diffusers' randn_tensor: standard normal noise of shape/options drawn from generator; a CPU generator
// feeding a GPU tensor draws on the CPU and copies, so seeds give the same noise on every device.
torch::Tensor randn_tensor(at::IntArrayRef shape, c10::optional<at::Generator> generator,
                           const torch::TensorOptions& options);

// A float32 1-d tensor as doubles (exact), and back.
std::vector<double> to_doubles(const torch::Tensor& t);
torch::Tensor to_float_tensor(const std::vector<double>& v);  // rounds each value to float32
torch::Tensor to_long_tensor(const std::vector<double>& v);   // truncates like numpy astype(int64)

// Karras et al. (2022) sigmas, rho = 7: (max^(1/rho) + ramp * (min^(1/rho) - max^(1/rho)))^rho,
// ramp = np.linspace(0, 1, n). Descending, n values.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);
// diffusers' _sigma_to_t: fractional training timestep whose log-sigma interpolates log_sigmas
// (ascending, float32 values).
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas);

namespace np {
// numpy.linspace(start, stop, num) (endpoint=True) in float64, element for element.
std::vector<double> linspace(double start, double stop, int64_t num);
// numpy.arange(start, stop, step) for a float step (numpy fills start + i * (next - start)).
std::vector<double> arange(double start, double stop, double step);
// numpy.round / ndarray.round(): half to even.
double round(double x);
// numpy.interp(x, arange(len(fp)), fp) in float64.
std::vector<double> interp(const std::vector<double>& x, const std::vector<double>& fp);
}  // namespace np

}  // namespace dreamlora::schedulers
