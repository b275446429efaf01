"""Image statistics a style detector reads: colour, texture, spatial frequency, border.

Generic on purpose (no look of the toy world is named here): a style changes colours (pastel,
night), adds periodic texture (hatching, halftone: peaks in the spectrum at their period and angle),
strokes (outlines: edge energy) or a border (frames). Images of any size are read at ``SIDE`` x
``SIDE`` for the spectrum, so features of a 64-pixel toy image and a 1024-pixel one mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SIDE = 64
RADIAL_BINS, ANGLE_BINS = 8, 4  # frequency bands x orientations (0, 45, 90, 135 degrees)


def spectrum_features(image: np.ndarray) -> np.ndarray:
    """Log power of the luminance spectrum in ``RADIAL_BINS`` bands x ``ANGLE_BINS`` orientations."""
    gray = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L").resize(
        (SIDE, SIDE), Image.BILINEAR), dtype=np.float64) / 255.0
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
    fy, fx = np.meshgrid(np.arange(SIDE) - SIDE // 2, np.arange(SIDE) - SIDE // 2, indexing="ij")
    radius = np.hypot(fy, fx)
    angle = ((np.degrees(np.arctan2(fy, fx)) + 180 + 180 / ANGLE_BINS / 2) % 180 // (180 / ANGLE_BINS)).astype(int)
    band = np.minimum((radius / (SIDE // 2) * RADIAL_BINS).astype(int), RADIAL_BINS - 1)
    bins = np.zeros((RADIAL_BINS, ANGLE_BINS))
    keep = radius > 0  # the mean is gone; the DC term carries nothing
    np.add.at(bins, (band[keep], angle[keep]), power[keep])
    return np.log1p(bins.flatten() / power.size)


def border_features(image: np.ndarray) -> np.ndarray:
    """The outer ring's colour against the inside, both spreads, and the local contrast."""
    x = np.asarray(image, dtype=np.float64) / 255.0
    height, width = x.shape[:2]
    ring_width = max(1, min(height, width) // 16)
    ring = np.ones((height, width), dtype=bool)
    ring[ring_width:-ring_width, ring_width:-ring_width] = False
    laplacian = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]).mean()
    return np.concatenate([x[ring].mean(axis=0) - x[~ring].mean(axis=0), [x[ring].std(), x[~ring].std(), laplacian]])


def style_features(images: Sequence[np.ndarray]) -> np.ndarray:
    """(n, d) features of RGB uint8 images: colour/texture statistics (the transfer filter's),
    spectrum bands and border statistics."""
    from ..transfer.discriminator import color_features  # function-level: see quality/detector.py

    if not len(images):
        raise ValueError("no images to describe")
    return np.stack([np.concatenate([color_features(im), spectrum_features(im), border_features(im)])
                     for im in images])
