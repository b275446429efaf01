"""Read a toy-world image back: background color, object color, shape.

No learned judge: the palette is known exactly, so colors are the nearest palette entries of robust
pixel statistics, and the shape follows from the object's silhouette, specks dropped (how much of
its bounding box it fills, whether its sides are straight, whether its center is hollow). These
are the content measures every later claim (training, fusion, transfer) uses.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .world import COLORS

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float64)


def nearest_color(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


OBJECT_DISTANCE = 60.0  # RGB distance from the background above which a pixel is the object's


def background_and_object(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The background RGB (median of the border pixels) and the boolean object mask."""
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=-1))
    return background_rgb, distance > OBJECT_DISTANCE


def read_content(image: np.ndarray) -> dict[str, str | None]:
    """``{"background", "color", "shape"}`` of an RGB uint8 (H, W, 3) image; None where unreadable."""
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    background_rgb, obj = background_and_object(image)
    background = nearest_color(background_rgb)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=-1))
    if obj.sum() < 20:
        return {"background": background, "color": None, "shape": None}
    # The object's own color: pixels far from the background, inner ones (antialiased edges blend).
    far = distance >= np.percentile(distance[obj], 50)
    object_rgb = np.median(pixels[far], axis=0)
    color = nearest_color(object_rgb)
    if color == background:
        color = None
    # The silhouette: pixels nearer the object's color than the background's. A fixed distance
    # threshold also picks up a generated image's uneven background (drifting whites, soft blotches),
    # which stretches the bounding box over the whole image.
    silhouette = ((pixels - object_rgb) ** 2).sum(axis=-1) < distance**2
    if silhouette.sum() < 20:
        return {"background": background, "color": color, "shape": None}
    return {"background": background, "color": color, "shape": classify_shape(silhouette)}


# Pieces of a silhouette smaller than this share of its largest piece are specks (a VAE's or a
# sampler's stray pixels near the object's color), not part of the shape: kept, they stretch the
# bounding box the classifier measures.
SPECK = 0.1
# Square or circle: how much of the bounding box's width (height) the silhouette covers on the rows
# (columns) at 20 % and 80 % of its height (width). A circle covers 80 %, a square all of it, and
# still about 97 % with its corners rounded to 60 % of its half side, as generated squares often are
# (the fill of the whole box, 0.785 vs 1, puts such squares half way).
STRAIGHT_SIDES = 0.9


def drop_specks(mask: np.ndarray) -> np.ndarray:
    # scipy's labelling: numpy has no connected components.
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, np.nonzero(sizes >= SPECK * sizes.max())[0] + 1)


def classify_shape(mask: np.ndarray) -> str:
    """Circle, square, triangle or ring from a boolean silhouette."""
    mask = drop_specks(mask)
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    height, width = bottom - top + 1, right - left + 1
    fill = mask.sum() / float(height * width)
    cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
    # A ring's middle (within a third of its radius) is background.
    r = min(height, width) / 2.0
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    core = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r / 3.0) ** 2
    if core.any() and mask[core].mean() < 0.5:
        return "ring"
    # Triangle: the top rows are much narrower than the bottom ones (about 0.14 of them; pixel art's
    # blocks round small ones to exactly half); a circle is symmetric.
    upper = mask[top : top + max(1, height // 4)].sum()
    lower = mask[bottom - max(1, height // 4) + 1 : bottom + 1].sum()
    if fill < 0.65 or upper <= 0.5 * lower:
        return "triangle"
    rows = [mask[top + round(f * (height - 1))].sum() / width for f in (0.2, 0.8)]
    columns = [mask[:, left + round(f * (width - 1))].sum() / height for f in (0.2, 0.8)]
    return "square" if np.mean(rows + columns) > STRAIGHT_SIDES else "circle"
