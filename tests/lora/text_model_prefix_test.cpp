// Text-encoder LoRA keys with and without CLIPTextModel's `text_model.` level (transformers 4 / 5 layouts)
// read to the same modules.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dreamlora/lora/formats.h"

namespace dreamlora::lora {
namespace {

std::map<std::string, torch::Tensor> text_encoder_lora(const std::string& component_and_path,
                                                       const std::string& down, const std::string& up) {
  return {{component_and_path + down, torch::ones({2, 8})},
          {component_and_path + up, torch::full({8, 2}, 0.5)}};
}

TEST(TextModelPrefix, TransformersFiveKeysWithoutTextModelReadLikeTransformersFour) {
  const std::string path = "encoder.layers.3.self_attn.q_proj";
  for (const auto& [down, up] : {std::pair<std::string, std::string>{".lora.down.weight", ".lora.up.weight"},
                                 {".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"},
                                 {".lora_A.weight", ".lora_B.weight"}}) {
    for (const std::string component : {"text_encoder", "text_encoder_2"}) {
      const auto old_layout =
          parse_lora_tensors(text_encoder_lora(component + ".text_model." + path, down, up), {}, "t4");
      const auto new_layout =
          parse_lora_tensors(text_encoder_lora(component + "." + path, down, up), {}, "t5");
      ASSERT_EQ(new_layout.components.count(component), 1u) << down;
      const auto& modules = new_layout.components.at(component);
      ASSERT_EQ(modules.count("text_model." + path), 1u) << down;
      EXPECT_TRUE(torch::equal(modules.at("text_model." + path).up,
                               old_layout.components.at(component).at("text_model." + path).up));
    }
  }
  // a peft state dict of the text encoder alone: no component prefix at all
  const auto peft =
      parse_lora_tensors(text_encoder_lora(path, ".lora_A.weight", ".lora_B.weight"), {}, "peft");
  ASSERT_EQ(peft.components.count("text_encoder"), 1u);
  EXPECT_EQ(peft.components.at("text_encoder").count("text_model." + path), 1u);
}

TEST(TextModelPrefix, UnetKeysAreNotTouched) {
  const auto w = parse_lora_tensors(
      text_encoder_lora("unet.down_blocks.0.attentions.0.proj_in", ".lora.down.weight", ".lora.up.weight"),
      {}, "unet");
  EXPECT_EQ(w.components.at("unet").count("down_blocks.0.attentions.0.proj_in"), 1u);
}

}  // namespace
}  // namespace dreamlora::lora
