"""A few DreamBooth-LoRA training steps with today's diffusers / peft / transformers, done the way diffusers'
examples/dreambooth/train_dreambooth_lora.py (SD1) and train_dreambooth_lora_sdxl.py (SDXL) do them, and the
file saved exactly as those scripts save it. Our own code: the scripts themselves are not in the diffusers
wheel and may not be committed, so interop.py uses this when build/diffusers-examples has no script.

Same calls as the scripts: peft LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", target_modules=
["to_k", "to_q", "to_v", "to_out.0"]) added with unet.add_adapter (text encoders: q/k/v/out_proj with
transformers' add_adapter, when the installed transformers/peft pair allows it); DDPMScheduler.add_noise on
VAE latents; MSE against the noise (or velocity); AdamW with gradient clipping; then
<Pipeline>.save_lora_weights(unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
text_encoder_lora_layers=..., [text_encoder_2_lora_layers=...]).
"""
from pathlib import Path

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_config(rank, targets):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)


def add_text_encoder_adapter(text_encoder, rank):
    """transformers' add_adapter, as the scripts call it with --train_text_encoder; None when it works, else
    the reason (e.g. transformers 5.24 demands a peft newer than any release)."""
    try:
        text_encoder.add_adapter(lora_config(rank, TEXT_TARGETS))
        return None
    except (ValueError, ImportError) as e:
        return "%s: %s" % (type(e).__name__, e)


def pixel_batch(images):
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for p in sorted(images)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def token_ids(tokenizer, prompt, count):
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.repeat(count, 1)


def sd1_conditioning(pipe, prompt, count):
    return pipe.text_encoder(token_ids(pipe.tokenizer, prompt, count))[0], {}


def sdxl_conditioning(pipe, prompt, count, size):
    """train_dreambooth_lora_sdxl.py's encode_prompt: penultimate hidden states of both encoders side by side,
    pooled output of the second; add_time_ids = original size + crop (0, 0) + target size."""
    import torch

    embeds = []
    pooled = None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        out = encoder(token_ids(tokenizer, prompt, count), output_hidden_states=True, return_dict=False)
        pooled = out[0]
        embeds.append(out[-1][-2])
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * count, dtype=torch.float32)
    return torch.cat(embeds, dim=-1), {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def training_target(scheduler, latents, noise, timesteps):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError("unknown prediction type %s" % kind)


def train_and_save(model, arch, images, out, prompt, steps=3, rank=4, lr=5e-2, train_text_encoder=True, seed=0):
    """Trains `steps` optimizer steps and writes out/pytorch_lora_weights.safetensors. Returns (path, the
    components holding LoRA layers, why the text encoders were not trained or None)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    kw = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(model, torch_dtype=torch.float32, **kw)
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    encoders = ["text_encoder", "text_encoder_2"] if arch == "sdxl" else ["text_encoder"]
    for name in ["unet", "vae"] + encoders:
        getattr(pipe, name).requires_grad_(False)

    pipe.unet.add_adapter(lora_config(rank, UNET_TARGETS))
    text_skipped = None
    trained = ["unet"]
    if train_text_encoder:
        for name in encoders:
            text_skipped = add_text_encoder_adapter(getattr(pipe, name), rank)
            if text_skipped:
                break
            trained.append(name)
        if text_skipped:
            trained = ["unet"]
            for name in encoders:  # a half-adapted pair would not be what the script trains
                getattr(pipe, name).requires_grad_(False)

    params = [p for name in trained for p in getattr(pipe, name).parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    pixels = pixel_batch(Path(images).glob("*.png"))
    size = pixels.shape[-1]
    for _ in range(steps):
        latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if arch == "sdxl":
            hidden, extra = sdxl_conditioning(pipe, prompt, latents.shape[0], size)
        else:
            hidden, extra = sd1_conditioning(pipe, prompt, latents.shape[0])
        pred = pipe.unet(noisy, timesteps, hidden, return_dict=False, **extra)[0]
        loss = F.mse_loss(pred.float(), training_target(scheduler, latents, noise, timesteps).float(),
                          reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    for name in encoders:
        layers[name + "_lora_layers"] = (convert_state_dict_to_diffusers(
            get_peft_model_state_dict(getattr(pipe, name))) if name in trained else None)
    cls.save_lora_weights(save_directory=str(out), **layers)
    return Path(out) / "pytorch_lora_weights.safetensors", trained, text_skipped
