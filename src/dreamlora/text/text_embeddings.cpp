// encode_prompt of diffusers 0.27's StableDiffusionPipeline / StableDiffusionXLPipeline.
#include "dreamlora/text/text_embeddings.h"

#include <torch/torch.h>

#include "dreamlora/common/error.h"
#include "dreamlora/nn/norms.h"

namespace dreamlora::text {
namespace {

torch::Tensor reference_weight(const CLIPTextModel& encoder) {
  return encoder->text_model->final_layer_norm->weight;  // its dtype/device stand for the encoder's
}

CLIPTextOutput run(CLIPTextModel encoder, const torch::Tensor& ids, bool hidden_states) {
  DL_CHECK(ids.defined() && ids.dim() == 2, "encode_prompt: input_ids must be int64 [batch, length]");
  return encoder->forward(ids.to(reference_weight(encoder).device(), torch::kInt64), hidden_states);
}

// hidden_states[-k] (Python's negative index)
torch::Tensor from_end(const CLIPTextOutput& out, int64_t k) {
  auto n = static_cast<int64_t>(out.hidden_states.size());
  DL_CHECK(k >= 1 && k <= n, "encode_prompt: clip_skip reaches hidden_states[-", k,
           "] but the encoder has only ", n, " (embeddings + layers)");
  return out.hidden_states[static_cast<size_t>(n - k)];
}

}  // namespace

PromptEmbeddings encode_prompt_ids(const TextEncoders& e, const torch::Tensor& input_ids,
                                   const torch::Tensor& input_ids_2, int64_t clip_skip) {
  DL_CHECK(clip_skip >= 0, "encode_prompt: clip_skip must be >= 0, got ", clip_skip);
  PromptEmbeddings result;
  if (!e.is_sdxl()) {
    DL_CHECK(!e.text_encoder.is_empty(), "encode_prompt: the pipeline has no text_encoder");
    if (clip_skip == 0) {
      result.prompt_embeds = run(e.text_encoder, input_ids, false).last_hidden_state;  // [B, L, D]
    } else {
      auto h = from_end(run(e.text_encoder, input_ids, true), clip_skip + 1);
      CLIPTextModel encoder = e.text_encoder;
      result.prompt_embeds = nn::layer_norm_fp32(encoder->text_model->final_layer_norm, h);
    }
    return result;
  }
  // SDXL: penultimate hidden state of each encoder ("2" because SDXL always indexes from the
  // penultimate layer), pooled output of the last encoder; all in text_encoder_2's dtype.
  auto dtype = reference_weight(e.text_encoder_2).scalar_type();
  std::vector<torch::Tensor> parts;
  if (!e.text_encoder.is_empty()) {
    parts.push_back(from_end(run(e.text_encoder, input_ids, true), clip_skip + 2).to(dtype));
  }
  CLIPTextOutput out2 = run(e.text_encoder_2, input_ids_2, true);
  parts.push_back(from_end(out2, clip_skip + 2).to(dtype));
  result.prompt_embeds = torch::cat(parts, -1);  // [B, L, D1 + D2]
  result.pooled_prompt_embeds =
      (out2.text_embeds.defined() ? out2.text_embeds : out2.pooler_output).to(dtype);
  return result;
}

PromptEmbeddings encode_prompt(const TextEncoders& e, const std::vector<std::string>& prompts,
                               int64_t clip_skip) {
  DL_CHECK(!prompts.empty(), "encode_prompt: no prompts");
  torch::Tensor ids, ids_2;
  if (!e.text_encoder.is_empty()) {
    DL_CHECK(e.tokenizer != nullptr, "encode_prompt: text_encoder has no tokenizer");
    ids = e.tokenizer->encode_batch(prompts);
  }
  if (e.is_sdxl()) {
    DL_CHECK(e.tokenizer_2 != nullptr, "encode_prompt: text_encoder_2 has no tokenizer_2");
    ids_2 = e.tokenizer_2->encode_batch(prompts);
  }
  return encode_prompt_ids(e, ids, ids_2, clip_skip);
}

}  // namespace dreamlora::text
