#!/usr/bin/env python3
"""Writes random-weight Stable Diffusion pipelines in diffusers layout for the GPU benchmark, without any
download: SD 1.5 and SDXL base 1.0 built from their real configs (sd_configs.py), weights initialised on the
GPU by diffusers/transformers' own code and saved as fp16 safetensors under the standard file names (both
trainers cast them to bf16). The CLIP tokenizer is the real BPE vocabulary from the fixtures. Also writes a
few instance images per resolution (smooth random colour fields).

  make_models.py --out DIR --configs real|tiny --tokenizer FIXTURES/tiny-sd/tokenizer [--device cuda]
"""
import argparse
import json
import os
import shutil
import time

import numpy as np
import torch

import sd_configs


def save_tokenizer(src, dst, pad_token):
    os.makedirs(dst, exist_ok=True)
    for name in ["vocab.json", "merges.txt"]:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    vocab = json.load(open(os.path.join(src, "vocab.json")))
    special = {"<|startoftext|>": vocab["<|startoftext|>"], "<|endoftext|>": vocab["<|endoftext|>"]}
    added = {str(i): {"content": t, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": True}
             for t, i in special.items()}
    if pad_token != "<|endoftext|>":
        added[str(vocab[pad_token])] = {
            "content": pad_token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {"added_tokens_decoder": added, "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True,
              "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77, "pad_token": pad_token,
              "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>"}
    json.dump(config, open(os.path.join(dst, "tokenizer_config.json"), "w"), indent=1)
    json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
               "unk_token": "<|endoftext|>"}, open(os.path.join(dst, "special_tokens_map.json"), "w"), indent=1)


def save_component(model, dst):
    model = model.to(torch.float16)
    model.save_pretrained(dst, safe_serialization=True)
    classic_clip_keys(dst)


def classic_clip_keys(dst):
    """transformers 5 writes CLIP text encoders without the `text_model.` prefix; every SD checkpoint (and
    dreamlora's loader) uses the classic keys, which transformers 5 still reads. Rewrite to those."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(dst, "model.safetensors")
    if not os.path.exists(path):
        return
    state = load_file(path)
    if any(k.startswith("text_model.") for k in state):
        return
    renamed = {(k if k.startswith("text_projection.") else "text_model." + k): v for k, v in state.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def make_pipeline(spec, out, tokenizer_src, device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    with torch.device(device):
        save_component(UNet2DConditionModel.from_config(spec["unet"]), os.path.join(out, "unet"))
        save_component(AutoencoderKL.from_config(spec["vae"]), os.path.join(out, "vae"))
        save_component(CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])), os.path.join(out, "text_encoder"))
        if "text_encoder_2" in spec:
            save_component(CLIPTextModelWithProjection(CLIPTextConfig(**spec["text_encoder_2"])),
                           os.path.join(out, "text_encoder_2"))
    save_tokenizer(tokenizer_src, os.path.join(out, "tokenizer"), "<|endoftext|>")
    if "text_encoder_2" in spec:
        save_tokenizer(tokenizer_src, os.path.join(out, "tokenizer_2"), "!")
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    json.dump(spec["scheduler"], open(os.path.join(out, "scheduler", "scheduler_config.json"), "w"), indent=1)
    json.dump(spec["model_index"], open(os.path.join(out, "model_index.json"), "w"), indent=1)
    if device == "cuda":
        torch.cuda.empty_cache()
    return round(time.time() - t0, 2)


def make_images(out, size, count=4):
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(size)
    for i in range(count):
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        img.save(os.path.join(out, "img%d.png" % i))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", choices=["real", "tiny"], default="real")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    specs = sd_configs.REAL if args.configs == "real" else sd_configs.TINY
    times = {}
    for name, spec in specs.items():
        if not os.path.exists(os.path.join(args.out, name, "model_index.json")):
            times[name] = make_pipeline(spec, os.path.join(args.out, name), args.tokenizer, args.device)
        make_images(os.path.join(args.out, "images-%d" % spec["resolution"]), spec["resolution"])
    print(json.dumps({"made_s": times}))


if __name__ == "__main__":
    main()
