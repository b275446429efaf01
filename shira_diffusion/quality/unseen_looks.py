"""Two looks no bundled style has and the toy bases were not trained on, rendered by the evaluation of
a new style (``shira eval new-style``): what a user's own style is to the project. Each has an exact
measure (does an image show it?) and an inverse that gives the content reader back the plain scene.
Both survive the toy VAE (encoded and decoded, a rendered look still reads as shown), so an adapter
can draw them.

- ``corner``: a cyan square in the top-left corner (no palette colour is near cyan);
- ``vignette``: corners darkened smoothly to a third, the centre untouched.
"""

from __future__ import annotations

import numpy as np

from ..toy.world import SIZE

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
_RADIUS = np.hypot(_YY - (SIZE - 1) / 2, _XX - (SIZE - 1) / 2) / (SIZE / 2)  # 1 at mid-edges, 1.41 at corners
VIGNETTE = np.clip(1.0 - (2 / 3) * np.clip((_RADIUS - 0.75) / (np.sqrt(2) - 0.75), 0, 1), 0, 1)
CORNER = 12  # pixels: the mark's side
CYAN = np.array([0.0, 200.0, 200.0])


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _luminance(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def corner(image: np.ndarray) -> np.ndarray:
    out = np.asarray(image, dtype=np.float64).copy()
    out[:CORNER, :CORNER] = CYAN
    return _uint8(out)


def corner_shown(image: np.ndarray) -> bool:
    """The middle of the mark's square is within 70 of cyan (the nearest palette colour is 128 away)."""
    inner = np.asarray(image, dtype=np.float64)[2:CORNER - 2, 2:CORNER - 2, :3].reshape(-1, 3)
    return bool(np.linalg.norm(np.median(inner, axis=0) - CYAN) <= 70)


def corner_removed(image: np.ndarray) -> np.ndarray:
    """The mark's square painted with the background (the median of the border outside it)."""
    out = np.asarray(image, dtype=np.float64).copy()
    border = np.concatenate([out[0, CORNER:], out[-1], out[CORNER:, 0], out[:, -1]])
    out[:CORNER + 2, :CORNER + 2] = np.median(border, axis=0)
    return _uint8(out)


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
    "corner": (corner, corner_shown, corner_removed),
    "vignette": (vignette, vignette_shown, vignette_removed),
}
