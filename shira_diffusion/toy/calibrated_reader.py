"""The toy content reader calibrated on a new style's own training images: reads a style it was never
told about.

``styled_content.read_styled_content`` undoes looks it knows by name; a user's style has no name the
reader knows. What it has instead are its training images and their captions, which say which
palette colours each image was drawn from. From them the reader learns:

- a per-channel affine colour map ``c -> a c + b`` (least squares over each image's background and
  object colours against the caption's palette colours): pastel's wash, night's darkening, any
  global tint;
- whether to read through an 8 x 8 box mean (periodic textures averaged away) and how wide a border
  ring to leave out (frames, vignettes, corner marks): the variant that reads the training images
  best against their captions.

It then reads background, object colour and shape as ``content.read_content`` does, against the
palette mapped through the learned colours. No look is named here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .content import OBJECT_DISTANCE, classify_shape
from .styled_content import box_mean
from .world import COLORS

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float64)
EDGES = (0, 4, 8)  # border rings tried, in pixels of a 64-pixel image (scaled with the image)
MIN_PIXELS = 20


@dataclass(frozen=True)
class CalibratedReader:
    scale: tuple[float, float, float]
    shift: tuple[float, float, float]
    box: bool
    edge: float  # the ring left out, as a share of the side
    training_accuracy: float

    def read(self, image: np.ndarray) -> dict[str, str | None]:
        """``{"background", "color", "shape"}``, None where unreadable."""
        return _read(np.asarray(image, dtype=np.float64)[..., :3], np.asarray(self.scale), np.asarray(self.shift),
                     self.box, _edge_pixels(self.edge, np.asarray(image).shape[0]))

    def to_dict(self) -> dict:
        return asdict(self)


def fit_calibrated_reader(images: Sequence[np.ndarray], expected: Sequence[dict]) -> CalibratedReader:
    """Learn the colour map, texture averaging and border ring from styled ``images`` and the
    ``{"color", "shape", "background"}`` their captions ask for."""
    if len(images) != len(expected) or not len(images):
        raise ValueError(f"{len(images)} images and {len(expected)} captions: one caption per image, at least one")
    pixels = [np.asarray(im, dtype=np.float64)[..., :3] for im in images]
    best = None
    for box in (False, True):
        seen = [box_mean(p) if box else p for p in pixels]
        for edge in EDGES:
            share = edge / 64
            scale, shift = _fit_colours(seen, expected, share)
            right = np.mean([_right(_read(p, scale, shift, False, _edge_pixels(share, p.shape[0])), want)
                             for p, want in zip(seen, expected)])
            if best is None or right > best.training_accuracy + 1e-9:  # ties keep the simpler variant
                best = CalibratedReader(tuple(map(float, scale)), tuple(map(float, shift)), box, share, float(right))
    return best


def _edge_pixels(share: float, side: int) -> int:
    return int(round(share * side))


def _right(got: dict, want: dict) -> bool:
    return all(got[k] == want[k] for k in ("color", "shape", "background"))


def _observed(pixels: np.ndarray, edge: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Background colour (median of the ring just inside ``edge``), object colour (median of its
    farther half) or None, each pixel's distance from the background, and the inner mask."""
    side = pixels.shape[0]
    inner = slice(edge, side - edge)
    ring = np.concatenate([pixels[edge, inner], pixels[-1 - edge, inner], pixels[inner, edge], pixels[inner, -1 - edge]])
    background = np.median(ring, axis=0)
    distance = np.sqrt(((pixels - background) ** 2).sum(axis=-1))
    inside = np.zeros(distance.shape, dtype=bool)
    inside[inner, inner] = True
    candidates = (distance > OBJECT_DISTANCE) & inside
    if candidates.sum() < MIN_PIXELS:
        return background, None, distance, inside
    far = candidates & (distance >= np.percentile(distance[candidates], 50))
    return background, np.median(pixels[far], axis=0), distance, inside


def _fit_colours(pixels: Sequence[np.ndarray], expected: Sequence[dict], edge_share: float):
    wanted, seen = [], []
    for p, want in zip(pixels, expected):
        background, obj, _, _ = _observed(p, _edge_pixels(edge_share, p.shape[0]))
        wanted.append(COLORS[want["background"]])
        seen.append(background)
        if obj is not None and want.get("color") in COLORS:
            wanted.append(COLORS[want["color"]])
            seen.append(obj)
    wanted, seen = np.asarray(wanted, dtype=np.float64), np.asarray(seen, dtype=np.float64)
    scale, shift = np.ones(3), np.zeros(3)
    if len(wanted) >= 2:
        for c in range(3):
            design = np.stack([wanted[:, c], np.ones(len(wanted))], axis=1)
            (scale[c], shift[c]), *_ = np.linalg.lstsq(design, seen[:, c], rcond=None)
    return scale, shift


def _read(pixels: np.ndarray, scale: np.ndarray, shift: np.ndarray, box: bool, edge: int) -> dict:
    if box:
        pixels = box_mean(pixels)
    table = scale * _PALETTE + shift

    def nearest(rgb):
        return _NAMES[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]

    background_rgb, object_rgb, distance, inside = _observed(pixels, edge)
    background = nearest(background_rgb)
    if object_rgb is None:
        return {"background": background, "color": None, "shape": None}
    color = nearest(object_rgb)
    silhouette = (((pixels - object_rgb) ** 2).sum(axis=-1) < distance**2) & inside
    if silhouette.sum() < MIN_PIXELS:
        return {"background": background, "color": color, "shape": None}
    return {"background": background, "color": None if color == background else color,
            "shape": classify_shape(silhouette)}
