"""The two bundled toy bases' architectures, as diffusers / transformers configs.

``toy-sd`` follows SD1.5's layout (one CLIP text encoder, cross-attention UNet); ``toy-sdxl``
follows SDXL's (two text encoders whose hidden states are concatenated, pooled text embeddings
and added time ids), with other widths and its own VAE, so that adapters cannot simply be copied
from one to the other. Both work on 64 x 64 images through a factor-4 VAE (16 x 16 latents).
``build_pipeline`` returns an untrained pipeline: the starting point of ``train_base`` and the
tiny stand-in the tests generate with.
"""

from __future__ import annotations

import torch

from .tokenizer import build_tokenizer

IMAGE_SIZE = 64
LATENT_SIZE = 16
MAX_TOKENS = 32

VAE_CONFIGS = {
    "sd": dict(block_out_channels=(32, 64, 128), latent_channels=4),
    "sdxl": dict(block_out_channels=(48, 96, 128), latent_channels=4),
}
TEXT_CONFIGS = {
    "sd": [dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4)],
    "sdxl": [
        dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, projection_dim=128),
    ],
}
UNET_CONFIGS = {
    "sd": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
    ),
    "sdxl": dict(
        # Attention at widths 96 and 160 (toy-sd: 64 and 128), so no adapted layer shares a shape.
        block_out_channels=(48, 96, 160),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=96 + 128,  # both encoders' hidden states, concatenated
        attention_head_dim=(4, 8, 10),  # diffusers' legacy name: the number of heads
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=128 + 6 * 16,  # pooled text + 6 time ids
    ),
}
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def build_pipeline(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """An untrained toy pipeline of the ``"sd"`` or ``"sdxl"`` family (random weights, seeded)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in UNET_CONFIGS:
        raise ValueError(f"unknown toy family {family!r}; choose 'sd' or 'sdxl'")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(MAX_TOKENS)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        **VAE_CONFIGS[family],
    )
    encoders = []
    for i, text in enumerate(TEXT_CONFIGS[family]):
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        )
        projected = family == "sdxl" and i == 1
        encoders.append(CLIPTextModelWithProjection(config) if projected else CLIPTextModel(config))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=VAE_CONFIGS[family]["latent_channels"],
        out_channels=VAE_CONFIGS[family]["latent_channels"],
        layers_per_block=1,
        norm_num_groups=16,
        **UNET_CONFIGS[family],
    )
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    if family == "sd":
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=encoders[0],
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizer,
            tokenizer_2=build_tokenizer(MAX_TOKENS),
            unet=unet,
            scheduler=scheduler,
            # The toy bases learn the unconditional prediction from the encoded empty prompt (as
            # diffusers' SDXL training script drops captions), so guidance must use that too.
            force_zeros_for_empty_prompt=False,
        )
    return pipe.to(dtype=dtype)
