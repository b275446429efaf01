"""Two looks no bundled style has and the toy bases were not trained on, rendered by the evaluation of
a new style (``shira eval new-style``): what a user's own style is to the project. Each has an exact
measure (does an image show it?) and an inverse that gives the content reader back the plain scene.

- ``scanlines``: every third row darkened by half (the base's generic stripes have periods 4-16);
- ``vignette``: corners darkened smoothly to a third, the centre untouched.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..toy.world import SIZE

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
_RADIUS = np.hypot(_YY - (SIZE - 1) / 2, _XX - (SIZE - 1) / 2) / (SIZE / 2)  # 1 at mid-edges, 1.41 at corners
VIGNETTE = np.clip(1.0 - (2 / 3) * np.clip((_RADIUS - 0.75) / (np.sqrt(2) - 0.75), 0, 1), 0, 1)
SCANLINE_PERIOD, SCANLINE_DARKNESS = 3, 0.5


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _luminance(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def scanlines(image: np.ndarray) -> np.ndarray:
    out = np.asarray(image, dtype=np.float64).copy()
    out[::SCANLINE_PERIOD] *= 1 - SCANLINE_DARKNESS
    return _uint8(out)


def scanlines_shown(image: np.ndarray) -> bool:
    """Rows of one phase of the period are at most 0.75x as bright as the others, on average."""
    rows = _luminance(image).mean(axis=1) + 1.0
    phases = np.array([rows[k::SCANLINE_PERIOD].mean() for k in range(SCANLINE_PERIOD)])
    return bool(phases.min() / np.delete(phases, phases.argmin()).mean() <= 0.75)


def scanlines_removed(image: np.ndarray) -> np.ndarray:
    return ndimage.median_filter(np.asarray(image), size=(3, 1, 1), mode="mirror")  # row 0 is a dark one


def vignette(image: np.ndarray) -> np.ndarray:
    return _uint8(np.asarray(image, dtype=np.float64) * VIGNETTE[..., None])


_CORNERS = _RADIUS > 1.25
_EDGES = (_RADIUS > 0.6) & (_RADIUS < 0.75)


def vignette_shown(image: np.ndarray) -> bool:
    """The corners at most 0.6x as bright as a ring just inside the mid-edges (1x on a plain scene's
    background; an object over the ring or the corners moves it less than the look does)."""
    lum = _luminance(image) + 1.0
    return bool(np.median(lum[_CORNERS]) / np.median(lum[_EDGES]) <= 0.6)


def vignette_removed(image: np.ndarray) -> np.ndarray:
    return _uint8(np.asarray(image, dtype=np.float64) / np.maximum(VIGNETTE, 1 / 3)[..., None])


UNSEEN_LOOKS = {
    "scanlines": (scanlines, scanlines_shown, scanlines_removed),
    "vignette": (vignette, vignette_shown, vignette_removed),
}
