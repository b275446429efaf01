"""Measures of generated images: content read back, a look's strength, PSNR, concept retention.

No learned judge and no download: content is read back by the toy world's reader (through a
style's look where one is applied, ``toy.styled_content``) and a look's strength is the share of
images its measure recognises (``toy.looks``). Evaluation, benchmarks, fusion and transfer all
measure through this module; it imports nothing from generation, training or the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .images import vae_round_trip
from .toy.content import read_content
from .toy.looks import MEASURES, THRESHOLDS, shows_look
from .toy.styled_content import read_styled_content


def content_scores(images: Sequence[np.ndarray], expected: Sequence[dict], looks: Sequence[str] = ()) -> dict:
    """Shares of images whose colors (object and background both), shape, and everything are right,
    and the shapes read for each prompted shape (``{prompted: {read: count}}``). ``expected``: one
    ``{"color", "shape", "background"}`` per image. With ``looks``, the images are read through
    those looks (``toy.styled_content``)."""
    if len(images) != len(expected):
        raise ValueError(f"{len(images)} images but {len(expected)} expected contents")
    if not images:
        raise ValueError("no images to score")
    colors = shape = both = 0
    confusion: dict[str, dict[str, int]] = {}
    for image, want in zip(images, expected):
        got = read_styled_content(np.asarray(image), looks) if looks else read_content(np.asarray(image))
        row = confusion.setdefault(want["shape"], {})
        row[str(got["shape"])] = row.get(str(got["shape"]), 0) + 1
        colors_right = got["color"] == want["color"] and got["background"] == want["background"]
        shape_right = got["shape"] == want["shape"]
        colors += colors_right
        shape += shape_right
        both += colors_right and shape_right
    n = len(expected)
    return {"colors": colors / n, "shape": shape / n, "all": both / n, "shape_confusion": confusion}


def style_strength(images: Sequence[np.ndarray], look: str) -> float:
    """The share of ``images`` that show ``look`` (its measure at or above its threshold)."""
    if look not in MEASURES:
        raise ValueError(f"unknown look {look!r} (looks: {', '.join(sorted(MEASURES))})")
    if not images:
        raise ValueError("no images to measure")
    return float(np.mean([shows_look(np.asarray(image), look) for image in images]))


def look_false_positives(images: Sequence[np.ndarray]) -> dict[str, float]:
    """For each bundled look, the share of these (plain-prompt) images its measure calls styled.

    The style measures were validated on rendered images; generated ones are softer, so this checks
    that a base's own plain output does not already read as a style (the zero point of style strength).
    """
    return {name: float(np.mean([MEASURES[name](np.asarray(im)) >= THRESHOLDS[name] for im in images]))
            for name in MEASURES}


def concept_retention(mixed_strength: float, alone_strength: float) -> float:
    """How much of a style survives a mix: its strength in the mixed images over its strength alone
    (same prompts and seeds). 1 keeps all of it; 0 where it showed nothing alone."""
    return float(mixed_strength / alone_strength) if alone_strength > 0 else 0.0


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images (or batches) on the same scale (0-255 by
    default); ``inf`` for identical inputs."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    mse = float(np.mean((a64 - b64) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def reconstruction_psnr(vae, images: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image through the VAE (encode -> mode -> decode), on the 0-255 scale;
    ``images`` is a batch in [-1, 1] as VAEs take it."""
    recon = vae_round_trip(vae, images).float().cpu()
    mse = ((recon - images.float().cpu()) ** 2).mean(dim=(1, 2, 3)) * (255 / 2) ** 2
    return (10 * torch.log10(255**2 / mse.clamp_min(1e-10))).numpy()
