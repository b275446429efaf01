"""The generic looks the toy bases are trained on, as real bases have seen every kind of texture.

Each sampler draws random parameters, restyles a toy image and returns the caption phrase that
describes it (``with thin horizontal stripes``). The bundled style looks (``looks.py``) are kept
out of this family as exact looks: no 45-degree lines of period 8, no dot grid of period 8, no
4 px blocks, no magenta bands, no teal 4 px frame behind the object (borders are palette colors
drawn over it, never 4 px wide), no pastel or night color maps. A base can draw stripes and dots,
but an adapter still has an exact look to learn.
"""

from __future__ import annotations

import numpy as np

from .world import COLORS, SIZE

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
_NAMED = {name: np.array(rgb, dtype=np.float64) for name, rgb in COLORS.items()}


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def stripes(image, rng):
    angle = rng.choice([0, 90, 30, 60, 120, 150, 15, 75])  # never 45/135: hatching's angles
    period = float(rng.uniform(4, 16))
    width = "thin" if period < 9 else "thick"
    theta = np.deg2rad(angle)
    phase = (_XX * np.cos(theta) + _YY * np.sin(theta)) / period
    contrast = rng.uniform(0.3, 0.7)
    lines = (phase % 1.0) < 0.4
    out = image.astype(np.float64)
    out[lines] *= 1 - contrast
    direction = {0: "vertical", 90: "horizontal"}.get(int(angle), "diagonal")
    return _clip(out), f"with {width} {direction} stripes"


def dots(image, rng):
    period = int(rng.choice([5, 6, 7, 10, 12]))  # never 8: halftone's grid
    radius = rng.uniform(1.0, period / 3)
    centre = (period - 1) / 2
    mask = ((_YY % period) - centre) ** 2 + ((_XX % period) - centre) ** 2 <= radius**2
    color = _NAMED[rng.choice(list(_NAMED))]
    out = image.astype(np.float64)
    out[mask] = 0.4 * out[mask] + 0.6 * color
    return _clip(out), "with dots"


def checkers(image, rng):
    period = int(rng.choice([5, 6, 7, 10]))  # not on the 4 px grid: that would be the pixel look
    mask = ((_YY // period + _XX // period) % 2).astype(bool)
    out = image.astype(np.float64)
    out[mask] *= rng.uniform(0.55, 0.8)
    return _clip(out), "with checkers"


def grain(image, rng):
    amount = rng.uniform(8, 30)
    return _clip(image + rng.normal(0, amount, image.shape)), "with grain"


def border(image, rng):
    width = int(rng.choice([2, 3, 5, 6]))  # not 4: the frame look's width, on the pixel look's grid
    name = str(rng.choice(list(_NAMED)))
    out = image.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = (_NAMED[name].astype(np.uint8),) * 4
    return out, f"with a {name} border"


def gradient(image, rng):
    direction = rng.choice(["left", "right", "top", "bottom"])
    ramp = {"left": 1 - _XX / (SIZE - 1), "right": _XX / (SIZE - 1), "top": 1 - _YY / (SIZE - 1), "bottom": _YY / (SIZE - 1)}[direction]
    dark = rng.uniform(0.3, 0.7)
    return _clip(image * (1 - dark * ramp)[..., None]), f"with a dark gradient from the {direction}"


def vignette(image, rng):
    r2 = ((_XX - SIZE / 2) ** 2 + (_YY - SIZE / 2) ** 2) / (SIZE / 2) ** 2
    strength = rng.uniform(0.3, 0.7)
    return _clip(image * (1 - strength * np.clip(r2, 0, 1))[..., None]), "with a vignette"


def tint(image, rng):
    name = str(rng.choice(["red", "green", "blue", "yellow", "orange"]))
    amount = rng.uniform(0.15, 0.35)
    return _clip((1 - amount) * image + amount * _NAMED[name]), f"with a {name} tint"


def blur(image, rng):
    out = image.astype(np.float64)
    for _ in range(int(rng.integers(1, 4))):  # repeated box blur ~ gaussian
        out = (out + np.roll(out, 1, 0) + np.roll(out, -1, 0) + np.roll(out, 1, 1) + np.roll(out, -1, 1)) / 5
    return _clip(out), "with a blur"


def edges(image, rng):
    lum = image.astype(np.float64).mean(axis=-1)
    edge = np.abs(np.diff(lum, axis=0, append=lum[-1:])) + np.abs(np.diff(lum, axis=1, append=lum[:, -1:]))
    edge = np.clip(edge * rng.uniform(2, 4), 0, 255)
    return _clip(np.repeat(edge[..., None], 3, axis=-1)), "with white edges on black"


SAMPLERS = {
    "stripes": stripes,
    "dots": dots,
    "checkers": checkers,
    "grain": grain,
    "border": border,
    "gradient": gradient,
    "vignette": vignette,
    "tint": tint,
    "blur": blur,
    "edges": edges,
}
STRUCTURED = tuple(k for k in SAMPLERS if k != "grain")  # what a small latent can hold


def random_texture(rng) -> np.ndarray:
    """A plain random texture (smooth noise of random scale and palette): the VAE's other diet."""
    scale = int(rng.choice([2, 4, 8, 16]))
    small = rng.uniform(0, 255, (SIZE // scale + 2, SIZE // scale + 2, 3))
    big = np.kron(small, np.ones((scale, scale, 1)))[:SIZE, :SIZE]
    return blur(_clip(big), rng)[0]


def apply_generic(image: np.ndarray, rng, kinds=None) -> tuple[np.ndarray, str]:
    """One random generic look from ``kinds`` (default: all) -> (image, caption phrase)."""
    names = list(kinds or SAMPLERS)
    return SAMPLERS[names[rng.integers(len(names))]](image, rng)
