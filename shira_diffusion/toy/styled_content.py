"""Read a toy image's content through known looks: did the content survive a style?

``content.read_content`` compares pixels with the plain palette, so a styled image (pastel's washed
colors, hatching's dark lines) reads wrong even when its content is intact. Every look is known
exactly, so the reader undoes what it can:
- periodic textures (hatching, halftone: period 8) are averaged away with an 8 x 8 box mean, which
  turns each flat color ``c`` into a known flat color;
- each look's effect on a flat color is then an affine map ``c -> a c + b`` (hatching darkens 3 of
  every 8 diagonals, halftone mixes dots and a whitened ground, pastel and night are color maps;
  pixel, outline and frame leave flat colors alone), composed in the looks' canonical order;
- the outline's magenta band (and its one-pixel fringe) is neither object nor background: it is
  left out of both, as is the frame (where it shows: the object may cover it); the background is
  then read just inside the frame.
The palette is mapped through the composed look and the usual reader runs on the result.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .content import classify_shape
from .looks import (
    FRAME,
    FRAME_RGB,
    LOOKS,
    NIGHT_SCALE,
    NIGHT_SHIFT,
    ORDER,
    OUTLINE_RGB,
    PERIOD,
    WHITE,
    dilate,
    frame_ring,
)
from .world import COLORS

_TEXTURES = ("hatching", "halftone")
# RGB distance to the band color (scaled by the color look); purple, the nearest palette color,
# is at 131. Under hatching or halftone the tighter fit reads shapes better on rendered mixes.
# The frame uses BAND_FIT too (after the box mean): its nearest palette colors are over 100 away.
BAND_FIT, BAND_FIT_TEXTURED = 90, 60


def _texture_fraction(look: str) -> float:
    """Share of a period cell that the texture marks (measured on the look itself): hatching's
    lines darken a mid gray, halftone's dots keep black black while its ground turns whitish."""
    if look == "hatching":
        return float(np.mean(LOOKS[look](np.full((PERIOD * 2, PERIOD * 2, 3), 200, np.uint8))[..., 0] != 200))
    return float(np.mean(LOOKS[look](np.zeros((PERIOD * 2, PERIOD * 2, 3), np.uint8))[..., 0] == 0))


def color_map(looks: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` such that a flat color ``c`` reads as ``a * c + b`` after the looks (box-averaged)."""
    a, b = np.ones(3), np.zeros(3)
    for look in ORDER:
        if look not in looks:
            continue
        if look == "hatching":
            f = _texture_fraction("hatching")
            scale, shift = (1 - f) + f * 0.45, np.zeros(3)
        elif look == "halftone":
            f = _texture_fraction("halftone")
            scale, shift = f * 0.7 + (1 - f) * 0.3, (1 - f) * 0.7 * WHITE
        elif look == "pastel":
            scale, shift = 0.5, 0.5 * WHITE
        elif look == "night":
            scale, shift = NIGHT_SCALE, NIGHT_SHIFT
        else:  # pixel, outline, frame: flat colors unchanged
            continue
        a, b = scale * a, scale * b + shift
    return a, b


def box_mean(pixels: np.ndarray, size: int = PERIOD) -> np.ndarray:
    padded = np.pad(pixels, ((size // 2, size - size // 2), (size // 2, size - size // 2), (0, 0)), mode="wrap")  # 64 px = 8 whole periods: exact at the edges
    summed = padded.cumsum(0).cumsum(1)
    summed = np.pad(summed, ((1, 0), (1, 0), (0, 0)))
    h, w = pixels.shape[:2]
    total = summed[size : size + h, size : size + w] - summed[:h, size : size + w] - summed[size : size + h, :w] + summed[:h, :w]
    return total / (size * size)


def read_styled_content(image: np.ndarray, looks: Iterable[str] = ()) -> dict[str, str | None]:
    """``{"background", "color", "shape"}`` of a toy image made (or generated) under ``looks``."""
    looks = set(looks)
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    a, b = color_map(looks)
    palette = {name: a * np.asarray(rgb, dtype=np.float64) + b for name, rgb in COLORS.items()}
    band = np.zeros(pixels.shape[:2], dtype=bool)
    if "outline" in looks:
        outline_rgb = a * OUTLINE_RGB + b
        distance = np.sqrt(((pixels - outline_rgb) ** 2).sum(-1))
        if looks & set(_TEXTURES):
            # Texture lines break the band; growing its pieces would eat the shape (measured).
            band = distance < BAND_FIT_TEXTURED
        else:
            # A VAE softens the band into its neighbours (blue + magenta reads purple): a looser
            # fit, grown by a pixel, keeps those fringes out of the object's and background's colors.
            band = dilate(distance < BAND_FIT * float(np.mean(a)), 1)
    if looks & set(_TEXTURES):
        pixels = box_mean(pixels)
    edge = 0
    if "frame" in looks:
        # Grown into the picture by a pixel, as a VAE blends the frame's inner edge, or by half a
        # texture period, as the box mean above blends it.
        grow = PERIOD // 2 if looks & set(_TEXTURES) else 1
        ring = frame_ring(pixels.shape[0], FRAME + grow)
        frame_rgb = a * FRAME_RGB + b
        near = np.sqrt(((pixels - frame_rgb) ** 2).sum(-1)) < BAND_FIT * float(np.mean(a))
        band |= ring & dilate(near & ring, grow)
        edge = FRAME + grow
    names = list(palette)
    table = np.array([palette[n] for n in names])

    def nearest(rgb):
        return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]

    inner = slice(edge, pixels.shape[0] - edge)
    border = np.concatenate([pixels[edge, inner], pixels[-1 - edge, inner], pixels[inner, edge], pixels[inner, -1 - edge]])
    border_band = np.concatenate([band[edge, inner], band[-1 - edge, inner], band[inner, edge], band[inner, -1 - edge]])
    background_rgb = np.median(border[~border_band] if (~border_band).any() else border, axis=0)
    background = nearest(background_rgb)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=-1))
    candidates = (distance > 60 * float(np.mean(a))) & ~band
    if candidates.sum() < 20:
        return {"background": background, "color": None, "shape": None}
    far = candidates & (distance >= np.percentile(distance[candidates], 50))
    object_rgb = np.median(pixels[far], axis=0)
    color = nearest(object_rgb)
    if color == background:
        color = None
    silhouette = (((pixels - object_rgb) ** 2).sum(axis=-1) < distance**2) & ~band
    if silhouette.sum() < 20:
        return {"background": background, "color": color, "shape": None}
    return {"background": background, "color": color, "shape": classify_shape(silhouette)}

