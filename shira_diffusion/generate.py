"""Text-to-image on any SD/SDXL base, optionally with a mix of style adapters fused in.

Determinism: image ``i`` of a batch is drawn with seed ``seed + i``, so a prompt gets the same
image whether it is generated alone or in a batch at the same position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from .bank import StyleBank
from .errors import ShiraError

STYLES_DIR = Path(__file__).resolve().parent.parent / "styles"


def parse_style(text: str) -> tuple[str, float]:
    """``FILE_OR_NAME[=WEIGHT]`` -> (file or name, weight)."""
    name, sep, weight = text.rpartition("=") if "=" in text else (text, "", "1")
    try:
        value = float(weight)
    except ValueError:
        raise ShiraError(f"style weight must be a number: {text!r}") from None
    return (name if sep else text), value


def style_file(style: str, base_name: str) -> str:
    """An adapter file for ``style``: a path as given, or a bundled style's adapter for the base."""
    if os.path.isfile(style):
        return style
    folder = STYLES_DIR / style
    candidate = folder / f"{style}.{base_name}.safetensors"
    if candidate.is_file():
        return str(candidate)
    bundled = sorted(p.name for p in STYLES_DIR.iterdir() if p.is_dir()) if STYLES_DIR.is_dir() else []
    raise ShiraError(
        f"no style {style!r}: not a file, and no bundled adapter {candidate.name} "
        f"(bundled styles: {', '.join(bundled) or 'none yet'})"
    )


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
):
    """Images (PIL) for ``prompts``, with the style mix ``styles`` ([(file or name, weight)]) fused."""
    if not prompts:
        raise ShiraError("nothing to generate: no prompt given")
    if steps < 1:
        raise ShiraError(f"steps must be at least 1, got {steps}")
    mix, triggers = {}, []
    owns_bank = bool(styles) and bank is None
    if styles:
        bank = bank or StyleBank(pipe.unet)
        for style, weight in styles:
            path = style_file(style, base_name)
            name = os.path.splitext(os.path.basename(path))[0]
            if name not in bank:
                bank.load(path, name=name)
            mix[name] = weight
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
