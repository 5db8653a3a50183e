#include "dreamlora/nn/uninitialized.h"

#include <torch/torch.h>

namespace dreamlora::nn {

namespace {
thread_local bool skip_init = false;
}

SkipInitGuard::SkipInitGuard() : previous_(skip_init) {
  skip_init = true;
}

SkipInitGuard::~SkipInitGuard() {
  skip_init = previous_;
}

bool init_skipped() {
  return skip_init;
}

// Built with one channel per group (a few floats to initialise), then given the real channel counts
// and uninitialised parameters of the real shapes: forward reads only options and parameters.
torch::nn::Conv2d conv2d(const torch::nn::Conv2dOptions& options) {
  if (!skip_init) return torch::nn::Conv2d(options);
  auto small = options;
  small.in_channels(options.groups()).out_channels(options.groups());
  torch::nn::Conv2d conv(small);
  conv->options.in_channels(options.in_channels()).out_channels(options.out_channels());
  const auto& k = *options.kernel_size();
  torch::NoGradGuard no_grad;
  conv->weight.set_data(
      torch::empty({options.out_channels(), options.in_channels() / options.groups(), k[0], k[1]}));
  if (options.bias()) conv->bias.set_data(torch::empty({options.out_channels()}));
  return conv;
}

torch::nn::Embedding embedding(int64_t num_embeddings, int64_t embedding_dim) {
  if (!skip_init) return torch::nn::Embedding(num_embeddings, embedding_dim);
  torch::nn::Embedding e(1, embedding_dim);
  e->options.num_embeddings(num_embeddings);
  torch::NoGradGuard no_grad;
  e->weight.set_data(torch::empty({num_embeddings, embedding_dim}));
  return e;
}

}  // namespace dreamlora::nn
