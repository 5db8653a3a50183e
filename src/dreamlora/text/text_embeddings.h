// The text conditioning SD pipelines feed the UNet (diffusers 0.27 encode_prompt, also what the
// DreamBooth LoRA scripts compute): SD1.x/2.x last_hidden_state; SDXL the two encoders' penultimate
// hidden states concatenated, pooled = text_encoder_2's text_embeds.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "dreamlora/text/clip_text_model.h"
#include "dreamlora/text/clip_tokenizer.h"

namespace dreamlora::text {

struct PromptEmbeddings {
  torch::Tensor prompt_embeds;         // [B, 77, D] (SDXL: D = D1 + D2)
  torch::Tensor pooled_prompt_embeds;  // [B, projection_dim]; SDXL only, undefined for SD1.x/2.x
};

// The tokenizers and text encoders of one pipeline. SD1.x/2.x: tokenizer + text_encoder. SDXL: both
// pairs; an SDXL refiner has only tokenizer_2 + text_encoder_2.
struct TextEncoders {
  std::shared_ptr<const CLIPTokenizer> tokenizer, tokenizer_2;
  CLIPTextModel text_encoder{nullptr}, text_encoder_2{nullptr};

  bool is_sdxl() const { return !text_encoder_2.is_empty(); }
};

// encode_prompt for a batch. clip_skip (diffusers' argument, 0 = off): SD uses
// final_layer_norm(hidden_states[-(clip_skip + 1)]), SDXL hidden_states[-(clip_skip + 2)].
// diffusers applies clip_skip to the prompt only, never to negative_prompt: to reproduce its negative
// embeddings pass clip_skip = 0 for them.
// Gradients flow when grad mode is on (text-encoder LoRA); ids are moved to each encoder's device and the
// embeddings come back in the first encoder's dtype.
PromptEmbeddings encode_prompt(const TextEncoders& encoders, const std::vector<std::string>& prompts,
                               int64_t clip_skip = 0);

// The same from already tokenized ids (e.g. cached): input_ids for text_encoder, input_ids_2 for
// text_encoder_2 (int64 [B, 77]); pass an undefined tensor for an encoder that is absent.
PromptEmbeddings encode_prompt_ids(const TextEncoders& encoders, const torch::Tensor& input_ids,
                                   const torch::Tensor& input_ids_2, int64_t clip_skip = 0);

}  // namespace dreamlora::text
