"""Small image helpers shared by training, benchmarks and the app."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def image_grid(images: Sequence[np.ndarray], columns: int = 8) -> np.ndarray:
    """Tile equal-height RGB uint8 images into rows of ``columns`` (the last row padded with black)."""
    images = [np.asarray(image) for image in images]
    rows = [np.concatenate(images[i : i + columns], axis=1) for i in range(0, len(images), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)
