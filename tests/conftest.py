"""Tiny SD- and SDXL-family UNets built from configs, and adapters on them: fast, offline tests."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from shira_diffusion import SparseAdapter, build_masks, target_weights, unet_family

TINY_SD = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)

TINY_SDXL = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=48,
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=48 + 6 * 8,
    norm_num_groups=32,
)


def make_unet(config=TINY_SD, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    return unet.eval().requires_grad_(False)


def unet_inputs(unet, seed=1, batch=1):
    """A fixed (sample, timestep, encoder states, added kwargs) tuple for a forward pass."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    dtype = unet.dtype
    sample = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(dtype)
    states = torch.randn(batch, 5, cfg.cross_attention_dim, generator=g).to(dtype)
    kwargs = {}
    if unet_family(unet) == "sdxl":
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=g).to(dtype),
            "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * batch, dtype=dtype),
        }
    return sample, torch.tensor([10]), states, kwargs


def forward(unet, inputs):
    sample, t, states, kwargs = inputs
    with torch.no_grad():
        return unet(sample, t, states, **kwargs).sample


def make_adapter(unet, name="a", mask="struct", targets="attn", seed=0, scale=0.05, dtype=torch.float32, **size):
    weights = target_weights(unet, targets)
    if not size:
        size = {"rank": 2}
    gradients = None
    if mask in ("grad", "snip"):
        g = torch.Generator().manual_seed(seed)
        gradients = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    masks = build_masks(weights, mask, gradients=gradients, seed=seed, **size)
    g = torch.Generator().manual_seed(100 + seed)
    return SparseAdapter(
        indices={n: m.to(torch.int32) for n, m in masks.items()},
        values={n: (torch.randn(len(m), generator=g) * scale).to(dtype) for n, m in masks.items()},
        shapes={n: tuple(w.shape) for n, w in weights.items()},
        base_arch=unet_family(unet),
        mask=mask,
        name=name,
        trigger=f"{name}-style",
        recipe={"seed": seed},
    )


def dense_reference(pristine, mix, adapters):
    """The weights a mix must produce from the ``pristine`` state dict, densely in fp32: W + sum(w * delta)."""
    expected = {}
    for name, weight in mix.items():
        adapter = adapters[name]
        for tensor in adapter.shapes:
            base = expected.get(tensor, pristine[tensor].float().clone())
            expected[tensor] = base + weight * adapter.delta(tensor)
    return expected


@pytest.fixture
def sd_unet():
    return make_unet(TINY_SD)


@pytest.fixture
def sdxl_unet():
    return make_unet(TINY_SDXL)


@pytest.fixture(scope="session")
def toy_pipeline_folders(tmp_path_factory):
    """Untrained toy pipelines of both families saved as diffusers folders: {"sd": path, "sdxl": path}."""
    from shira_diffusion.toy.architectures import build_pipeline

    folders = {}
    for family in ("sd", "sdxl"):
        folder = tmp_path_factory.mktemp(f"toy-{family}")
        build_pipeline(family, seed=1).save_pretrained(folder)
        folders[family] = str(folder)
    return folders
