"""What a UNet is: its family (SD or SDXL), its adaptable weights, and a fingerprint of their shapes.

Adapters store parameter names exactly as ``unet.named_parameters()`` spells them
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight``), so a file made for
one base can be checked against another before anything is written into its weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..errors import ShiraError

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
# "all" adds the transformer projections and the resnet convolutions, which carry much of a look.
PROJECTIONS_AND_CONVS = ("proj_in", "proj_out", "conv1", "conv2")

# The cross-attention keys and values are the only layers that read the prompt's embeddings;
# leaving them frozen keeps the base's text-to-content binding, so a look cannot tie itself to
# the training captions' words (Custom Diffusion trains exactly these to bind new words).
IMAGE_ATTENTION = tuple(f"attn1.{m}" for m in ATTENTION) + ("attn2.to_q", "attn2.to_out.0")

TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ATTENTION,
    "attn-ff": ATTENTION + FEED_FORWARD,
    "all": ATTENTION + FEED_FORWARD + PROJECTIONS_AND_CONVS,
    "all-but-text-kv": IMAGE_ATTENTION + FEED_FORWARD + PROJECTIONS_AND_CONVS,
}

FAMILIES = ("sd", "sdxl")


def unet_family(unet: nn.Module) -> str:
    """``"sdxl"`` for UNets with SDXL's added time ids, ``"sd"`` for the SD1.x/2.x family."""
    config = getattr(unet, "config", None)
    if config is None:
        raise ShiraError(f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    return "sdxl" if getattr(config, "addition_embed_type", None) == "text_time" else "sd"


def resolve_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise ShiraError(f"unknown target preset {targets!r}; choose one of {', '.join(TARGET_PRESETS)}")
        return TARGET_PRESETS[targets]
    suffixes = tuple(targets)
    if not suffixes:
        raise ShiraError("targets must name at least one module suffix")
    return suffixes


def _matches(module_name: str, suffix: str) -> bool:
    if not (module_name == suffix or module_name.endswith("." + suffix)):
        return False
    # conv1/conv2 exist only in resnets, but keep the rule explicit so conv_in/conv_out never match.
    if suffix in ("conv1", "conv2"):
        return ".resnets." in module_name
    return True


def target_weights(unet: nn.Module, targets: str | Iterable[str] = "attn") -> dict[str, torch.Tensor]:
    """The weights of the Linear and Conv2d modules matched by ``targets``, by parameter name."""
    suffixes = resolve_targets(targets)
    found: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if any(_matches(name, s) for s in suffixes):
            found[f"{name}.weight"] = module.weight
    if not found:
        raise ShiraError(f"no Linear or Conv2d module of this UNet matches targets {list(suffixes)}")
    return found


def shape_fingerprint(shapes: Mapping[str, Iterable[int]]) -> str:
    """A short hash of tensor names and shapes: equal iff the adapted tensors line up."""
    digest = hashlib.sha256()
    for name in sorted(shapes):
        digest.update(f"{name}:{'x'.join(str(int(d)) for d in shapes[name])}\n".encode())
    return digest.hexdigest()[:16]


# Full-size UNet configs, so benchmarks can build the real architectures without a download.
SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

FULL_SIZE_CONFIGS = {"sd15": SD15_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG}


def random_full_size_unet(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The real SD1.5 or SDXL UNet architecture with random weights (no download).

    Weights are allocated empty and filled with N(0, 0.02): kaiming init of 2.6 B parameters
    takes minutes on a CPU, and switch/merge timings do not depend on the values.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    if arch not in FULL_SIZE_CONFIGS:
        raise ShiraError(f"unknown architecture {arch!r}; choose one of {', '.join(FULL_SIZE_CONFIGS)}")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(FULL_SIZE_CONFIGS[arch])
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    return unet.eval().requires_grad_(False)
