"""Model configs for the GPU benchmark (bench/gpu/make_models.py), written down here so that no download is
needed: REAL holds the config.json values of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0 (UNet, VAE, text encoders, scheduler); TINY mirrors the parity
fixtures' sizes for the CPU dry run. Keys left out take diffusers'/transformers' defaults, which equal the
published files' values.
"""

SCALED_LINEAR = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "trained_betas": None, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
                 "steps_offset": 1, "prediction_type": "epsilon"}

CLIP_L = {"architectures": ["CLIPTextModel"], "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
          "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
          "layer_norm_eps": 1e-05, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
          "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02}
CLIP_BIGG = dict(CLIP_L, architectures=["CLIPTextModelWithProjection"], hidden_size=1280, intermediate_size=5120,
                 num_attention_heads=20, num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)

VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
       "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}

SD15_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
             "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "sample_size": 64}

SDXL_UNET = {"act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
             "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
             "center_input_sample": False, "cross_attention_dim": 2048,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
             "norm_eps": 1e-05, "norm_num_groups": 32, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
             "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True, "upcast_attention": None}

SD_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.40.0", "feature_extractor": [None, None],
            "image_encoder": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.40.0", "feature_extractor": [None, None],
              "force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
              "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
              "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"]}

REAL = {
    "sd15": {"resolution": 512, "unet": SD15_UNET, "vae": VAE, "text_encoder": CLIP_L, "model_index": SD_INDEX,
             "scheduler": dict(SCALED_LINEAR, _class_name="PNDMScheduler")},
    "sdxl": {"resolution": 1024, "unet": SDXL_UNET, "vae": dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
             "text_encoder": CLIP_L, "text_encoder_2": CLIP_BIGG, "model_index": SDXL_INDEX,
             "scheduler": dict(SCALED_LINEAR, _class_name="EulerDiscreteScheduler", interpolation_type="linear",
                               timestep_spacing="leading", use_karras_sigmas=False, sample_max_value=1.0)},
}

_TINY_TEXT = dict(CLIP_L, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, projection_dim=32)
_TINY_VAE = dict(VAE, block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, sample_size=64)
TINY = {
    "tiny-sd15": dict(REAL["sd15"], resolution=64, text_encoder=_TINY_TEXT, vae=_TINY_VAE,
                      unet=dict(SD15_UNET, block_out_channels=[32, 64], cross_attention_dim=32, sample_size=32,
                                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])),
    "tiny-sdxl": dict(REAL["sdxl"], resolution=64, text_encoder=_TINY_TEXT,
                      text_encoder_2=dict(_TINY_TEXT, architectures=["CLIPTextModelWithProjection"], hidden_act="gelu"),
                      vae=dict(_TINY_VAE, scaling_factor=0.13025, force_upcast=True),
                      unet=dict(SDXL_UNET, block_out_channels=[32, 64], attention_head_dim=[2, 4], cross_attention_dim=64,
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, sample_size=32,
                                transformer_layers_per_block=[1, 2], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"])),
}
