"""Text-to-image on any SD/SDXL base, optionally with a mix of style adapters fused in.

Determinism: image ``i`` of a batch is drawn with seed ``seed + i``, so a prompt gets the same
image whether it is generated alone or in a batch at the same position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from .catalog import StyleCatalog, bank_key, default_catalog
from .core.bank import StyleBank
from .errors import ShiraError

DEFAULT_GUIDANCE = 5.0  # the pipelines' default; a style's recommended guidance may replace it
MAX_STYLE_WEIGHT = 10.0  # beyond this a delta swamps the base's weights: black or noisy images


def check_weight(weight: float, style: str = "") -> float:
    if not math.isfinite(weight) or abs(weight) > MAX_STYLE_WEIGHT:
        raise ShiraError(f"style weight {weight:g}{f' for {style}' if style else ''} is outside "
                         f"[-{MAX_STYLE_WEIGHT:g}, {MAX_STYLE_WEIGHT:g}]")
    return weight


def parse_style(text: str) -> tuple[str, float]:
    """``FILE_OR_NAME[=WEIGHT]`` -> (file or name, weight)."""
    name, sep, weight = text.rpartition("=") if "=" in text else (text, "", "1")
    try:
        value = float(weight)
    except ValueError:
        raise ShiraError(f"style weight must be a number: {text!r}") from None
    return (name if sep else text), check_weight(value, name if sep else text)


def style_file(style: str, base_name: str, catalog: StyleCatalog | None = None) -> str:
    """An adapter file for ``style``: a path as given, or a catalogue style's adapter for the base."""
    return str((catalog or default_catalog()).resolve_adapter(style, base_name))


def with_triggers(prompt: str, triggers: Sequence[str]) -> str:
    """Append trigger words the prompt lacks, so a style applies to plain prompts."""
    missing = [t for t in triggers if t and t not in prompt]
    return ", ".join([prompt, *missing]) if missing else prompt


def generate(
    pipe,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 5.0,
    styles: Sequence[tuple[str, float]] = (),
    base_name: str = "",
    bank: StyleBank | None = None,
    catalog: StyleCatalog | None = None,
):
    """Images (PIL) for ``prompts``, with the style mix ``styles`` ([(file or name, weight)]) fused.
    Bank entries are keyed by the adapter file's resolved path (``catalog.bank_key``): two files
    that share a name are two entries, and a style given twice is an error."""
    if not prompts:
        raise ShiraError("nothing to generate: no prompt given")
    if steps < 1:
        raise ShiraError(f"steps must be at least 1, got {steps}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ShiraError(f"guidance must be a finite number >= 0, got {guidance_scale}")
    mix, triggers = {}, []
    owns_bank = bool(styles) and bank is None
    if styles:
        bank = bank or StyleBank(pipe.unet)
        for style, weight in styles:
            path = style_file(style, base_name, catalog)
            name = bank_key(path)
            if name in mix:
                raise ShiraError(f"style {style!r} is given twice; give each style once with its weight")
            if name not in bank:
                bank.load(path, name=name)
            mix[name] = check_weight(weight, style)
            triggers.append(bank.info(name)["trigger"])
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    try:
        with bank.use(mix) if styles else nullcontext(), torch.no_grad():
            for i, prompt in enumerate(prompts):
                result = pipe(
                    with_triggers(prompt, triggers),
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(seed + i),
                    height=size,
                    width=size,
                )
                images.append(result.images[0])
    finally:
        if owns_bank:
            bank.restore()  # leave the caller's UNet as it came
    return images


def generate_batched(pipe, prompts: Sequence[str], steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE,
                     batch_size: int = 10, desc: str = "", seeds: Sequence[int] | None = None) -> list[np.ndarray]:
    """RGB uint8 arrays for ``prompts``: image i with seed i (or ``seeds[i]``), ``batch_size`` at a time
    (one generator per image, so an image does not depend on its batch). For measuring many images."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    images = []
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            chunk = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(seed) for seed in seeds[start : start + len(chunk)]]
            out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size,
                       generator=generators, output_type="np")
            images.extend((out.images * 255).round().astype(np.uint8))
    return images


@contextmanager
def applied_adapter(pipe, bank: StyleBank, path, kind: str, weight: float = 1.0):
    """An adapter file in use on ``pipe`` at ``weight`` inside the block: a SHiRA file (``kind``
    "shira" or "shira-<mask>") fused through ``bank``, a LoRA (``kind`` "lora") loaded through
    diffusers, as users load it; removed again afterwards."""
    if kind != "lora":
        bank.load(str(path), name="evaluated")
        try:
            with bank.use({"evaluated": weight}):
                yield
        finally:
            bank.remove("evaluated")
    else:
        pipe.load_lora_weights(str(path), adapter_name="evaluated")
        try:
            if weight != 1.0:
                pipe.set_adapters(["evaluated"], [weight])
            yield
        finally:
            pipe.delete_adapters("evaluated")
