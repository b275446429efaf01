"""Content kept: how much of the base's image for the same prompt and seed a styled image keeps, in
terms that ignore the style.

- A structure proxy, for every style: both images are reduced to their luminance blurred at a
  sixteenth of their side, less an eighth at each border (a style changes colours, textures, fine
  strokes and frames; the layout of large shapes survives), and an image keeps its content when the
  two correlate at ``STRUCTURE_THRESHOLD`` or more. On toy scenes every bundled look applied to an
  exact render is read as kept, and a different scene is not (``tests/test_quality.py``). A proxy,
  not a judge of what is drawn: on generated images it misjudges (docs/training.md).
- The toy world's content reader, for toy prompts: the share of images whose shape and colours read
  as the prompt asks, as ``shira eval styles`` reads them, through a look it knows (``looks``) or,
  for a new style, calibrated on the style's own training images (``reader``,
  ``toy.calibrated_reader``: the colour map, texture averaging and border the captions imply). The
  plain reader alone misreads most bundled looks even on exact renders (tested); the calibrated one
  agrees with the look-aware reader on generated images (docs/training.md). The base's images are
  read by the plain reader.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..metrics import content_scores
from ..toy.world import parse_prompt

STRUCTURE_BLUR = 1 / 16  # Gaussian sigma as a share of the image side: hatching, dots and strokes vanish
STRUCTURE_MARGIN = 1 / 8  # of each side, left out: frames and vignettes live there
STRUCTURE_THRESHOLD = 0.75


def is_toy_prompt(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
        return True
    except ValueError:
        return False


def structure_map(image: np.ndarray) -> np.ndarray:
    """The blurred luminance without its border, zero-mean and unit-norm (for a correlation)."""
    x = np.asarray(image, dtype=np.float64) / 255.0
    luminance = x[..., :3] @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x
    blurred = ndimage.gaussian_filter(luminance, sigma=max(1.0, STRUCTURE_BLUR * max(luminance.shape)))
    rows, cols = (int(STRUCTURE_MARGIN * n) for n in blurred.shape)
    inner = blurred[rows:blurred.shape[0] - rows, cols:blurred.shape[1] - cols]
    inner = inner - inner.mean()
    return inner / (np.linalg.norm(inner) + 1e-12)


def structure_similarity(styled: np.ndarray, plain: np.ndarray) -> float:
    """Correlation of the two images' structure maps, in [-1, 1] (0 for a flat image)."""
    return float((structure_map(styled) * structure_map(plain)).sum())


def content_kept(styled: Sequence[np.ndarray], plain: Sequence[np.ndarray], prompts: Sequence[str],
                 looks: Sequence[str] = (), reader=None) -> dict:
    """``{"content", "base_content", "method"}`` for styled and plain images of the same prompts and
    seeds: the share of styled images that keep their content, and the base's own share on the same
    terms (1 for the structure proxy, where the base is its own reference). ``reader``: a
    ``toy.calibrated_reader.CalibratedReader`` for the styled images of toy prompts."""
    if not (len(styled) == len(plain) == len(prompts)) or not len(prompts):
        raise ValueError(f"{len(styled)} styled, {len(plain)} plain images and {len(prompts)} prompts: "
                         "one of each per prompt, at least one")
    if looks and all(is_toy_prompt(p) for p in prompts):
        expected = [parse_prompt(p) for p in prompts]
        return {"content": content_scores(list(styled), expected, looks=list(looks))["all"],
                "base_content": content_scores(list(plain), expected)["all"], "method": "toy reader"}
    if reader is not None and all(is_toy_prompt(p) for p in prompts):
        expected = [parse_prompt(p) for p in prompts]
        right = [all(reader.read(im)[k] == want[k] for k in ("color", "shape", "background"))
                 for im, want in zip(styled, expected)]
        return {"content": float(np.mean(right)), "base_content": content_scores(list(plain), expected)["all"],
                "method": "toy reader, calibrated on the training images"}
    kept = [structure_similarity(s, p) >= STRUCTURE_THRESHOLD for s, p in zip(styled, plain)]
    return {"content": float(np.mean(kept)), "base_content": 1.0, "method": "structure proxy"}
