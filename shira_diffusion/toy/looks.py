"""Procedural style looks of the toy world, and a measure of how strongly an image shows each.

Every look changes a different property of the image, so two looks combine and each stays
measurable in the mix:

| look | kind | what it does | its measure |
|---|---|---|---|
| pixel | resolution | averages 4x4 blocks | share of the gradient energy on the 4 px block grid |
| outline | overlay | a 3 px magenta band around the object | share of pixels explained by the band color, or strongly magenta |
| frame | overlay | a 4 px teal frame at the image's edge, behind the object | share of the frame's outer pixels explained by the frame color, or clearly teal |
| hatching | texture | darkens diagonal lines ``(x + y) mod 8 < 3`` | spectral energy around (8, 8) minus around (8, -8) |
| halftone | texture | ink dots on a grid of period 8, paper white between | spectral energy at (8, 0) and (0, 8) and their sideways neighbours |
| pastel | color | halfway to white | share of regions (background, object) explained by a pastel color |
| night | color | darker, bluer | share of regions explained by a night color |

Pixel's 4 px blocks are one latent cell each: the toy bases' VAEs smooth them away, so no bundled
style uses pixel (the frame style took its place); the look stays, as the bases' decoders were
trained on it. Looks keep the object's hue and silhouette, so content stays readable under them
(luminance-only looks such as sepia would merge red and purple, which have the same luminance).
A mix applies its looks in ``ORDER`` (overlay, texture, resolution, color). Pairs in
``CONFLICTS`` erase each other (4 px blocks average an 8 px texture away; two color maps compose
into a third) and are not offered as mixes. "Explained": see ``_candidates``.

Measures return a strength score; ``THRESHOLDS`` holds the score above which an image counts as
showing the look (set between unstyled and styled rendered images; see tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .content import background_and_object
from .world import COLORS

BLOCK = 4
PERIOD = 8
OUTLINE_RGB = np.array([255.0, 0.0, 200.0])
FRAME_RGB = np.array([0.0, 180.0, 180.0])  # teal: no palette color, and none under any color look
FRAME = 4  # px; one latent cell of the toy VAEs, so the frame's inner edge lies on the latent grid
WHITE = np.array([250.0, 250.0, 250.0])
NIGHT_SCALE, NIGHT_SHIFT = 0.45, np.array([0.0, 10.0, 45.0])


def _float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)[..., :3]


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def pixel(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    h, w, _ = x.shape
    blocks = x.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, 3).mean(axis=(1, 3))
    return _uint8(np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1))


def outline(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    _, mask = background_and_object(image)
    band = dilate(mask, 3) & ~mask
    x[band] = OUTLINE_RGB
    return _uint8(x)


def frame_ring(size: int, width: int = FRAME) -> np.ndarray:
    """Boolean mask of the ``width`` px ring at the edge of a ``size`` x ``size`` image."""
    ring = np.ones((size, size), dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


def frame(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    _, mask = background_and_object(image)
    x[frame_ring(x.shape[0]) & ~mask] = FRAME_RGB  # behind the object, unlike a generic border
    return _uint8(x)


def hatching(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    yy, xx = np.mgrid[0 : x.shape[0], 0 : x.shape[1]]
    lines = (xx + yy) % PERIOD < 3
    x[lines] *= 0.45
    return _uint8(x)


def halftone(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    yy, xx = np.mgrid[0 : x.shape[0], 0 : x.shape[1]]
    centre = (PERIOD - 1) / 2.0
    dots = ((yy % PERIOD) - centre) ** 2 + ((xx % PERIOD) - centre) ** 2 <= 2.6**2
    x[dots] *= 0.7  # ink dots, visible on white too
    x[~dots] = 0.3 * x[~dots] + 0.7 * WHITE
    return _uint8(x)


def pastel(image: np.ndarray) -> np.ndarray:
    return _uint8(0.5 * _float(image) + 0.5 * WHITE)


def night(image: np.ndarray) -> np.ndarray:
    return _uint8(NIGHT_SCALE * _float(image) + NIGHT_SHIFT)


LOOKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pixel": pixel,
    "outline": outline,
    "frame": frame,
    "hatching": hatching,
    "halftone": halftone,
    "pastel": pastel,
    "night": night,
}
ORDER = ("outline", "frame", "hatching", "halftone", "pixel", "pastel", "night")
CONFLICTS = {
    frozenset(p)
    for p in (
        ("pixel", "hatching"),  # 4 px blocks average an 8 px texture away
        ("pixel", "halftone"),
        ("pixel", "outline"),  # ... and blend a 3 px band into its neighbours
        ("hatching", "halftone"),  # two textures on one grid
        ("pastel", "night"),  # two color maps compose into a third
    )
}


def apply_looks(image: np.ndarray, names: Iterable[str]) -> np.ndarray:
    """Apply one or more looks in the canonical order."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in LOOKS:
            raise ValueError(f"unknown look {name!r}; the toy world has {', '.join(LOOKS)}")
    for a in names:
        for b in names:
            if frozenset((a, b)) in CONFLICTS:
                raise ValueError(f"looks {a!r} and {b!r} erase each other and cannot be mixed")
    for name in ORDER:
        if name in names:
            image = LOOKS[name](image)
    return image


# ---------------------------------------------------------------------------------- measures
def _luminance(image: np.ndarray) -> np.ndarray:
    x = _float(image)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def pixel_strength(image: np.ndarray) -> float:
    lum = _luminance(image)
    dx = np.abs(np.diff(lum, axis=1))
    dy = np.abs(np.diff(lum, axis=0))
    on_grid_x = (np.arange(dx.shape[1]) % BLOCK) == BLOCK - 1
    on_grid_y = (np.arange(dy.shape[0]) % BLOCK) == BLOCK - 1
    total = dx.sum() + dy.sum()
    if total < 1e-6:
        return 0.0
    return float((dx[:, on_grid_x].sum() + dy[on_grid_y, :].sum()) / total)


def _candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every color a rendered image can have under any allowed mix, with its story.

    Candidates are every palette color and the overlay colors (outline, frame), first through each
    texture's color change (none, hatching's darkening, halftone's lightening), then through each
    color look (none, pastel, night). Returns (candidates, color look of each, overlay of each:
    ``PALETTE``, ``OUTLINE`` or ``FRAME_COLOR``).
    """
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    bases = np.concatenate([palette, OUTLINE_RGB[None], FRAME_RGB[None]])
    kind = np.array([PALETTE] * len(palette) + [OUTLINE, FRAME_COLOR])
    is_overlay = kind != PALETTE
    textures = [lambda c: c, lambda c: 0.45 * c, lambda c: 0.7 * c, lambda c: 0.3 * c + 0.7 * WHITE]
    colors = {"plain": lambda c: c, "pastel": lambda c: 0.5 * c + 0.5 * WHITE, "night": lambda c: NIGHT_SCALE * c + NIGHT_SHIFT}
    candidates, story, overlay = [], [], []
    for name, color in colors.items():
        for t, texture in enumerate(textures):
            # Mixes hold two looks: an overlay color goes through a texture or a color look, not both.
            keep = ~is_overlay if (t > 0 and name != "plain") else np.ones(len(bases), dtype=bool)
            candidates.append(np.clip(np.round(color(texture(bases[keep]))), 0, 255))
            story += [name] * int(keep.sum())
            overlay += list(kind[keep])
    candidates = np.concatenate(candidates)
    story, overlay = np.array(story), np.array(overlay)
    if "white" in COLORS:  # pastel white is white: it says nothing about pastel
        white = np.array(COLORS["white"], dtype=np.float64)
        story[(story == "pastel") & (np.abs(candidates - white).max(axis=1) < 12)] = "plain"
    return candidates, story, overlay


PALETTE, OUTLINE, FRAME_COLOR = 0, 1, 2
_CANDIDATES = _candidates()
FIT = 24.0  # RGB distance within which a region's color counts as explained by a candidate
OUTLINE_FIT = 16.0  # tighter for single pixels: blends of two colors must not pass for the band


def _stories(colors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each color: the color look of its nearest candidate, its overlay kind, and the distance."""
    candidates, story, overlay = _CANDIDATES
    d2 = ((colors.reshape(-1, 1, 3) - candidates[None]) ** 2).sum(-1)
    nearest = d2.argmin(axis=1)
    return story[nearest], overlay[nearest], np.sqrt(d2[np.arange(len(nearest)), nearest])


def _region_colors(image: np.ndarray) -> np.ndarray:
    """The dominant colors of the background and of the object (robust to textures, edges and
    blocks, which a per-pixel vote is not: a pixelated red disc on white has boundary blocks that
    are exactly pastel red)."""
    x = _float(image)
    background, mask = background_and_object(image)
    colors = [_dominant(x[~mask]) if (~mask).sum() >= 20 else background]
    if mask.sum() >= 20:
        colors.append(_dominant(x[mask]))
    return np.array(colors)


def _dominant(pixels: np.ndarray) -> np.ndarray:
    """The median of the most common coarse color (32 levels a channel): a region's own color even
    when blocks, edges or a texture cover part of it, and robust to noise."""
    bins = (pixels // 32).astype(np.int64) @ np.array([64, 8, 1])
    values, counts = np.unique(bins, return_counts=True)
    return np.median(pixels[bins == values[counts.argmax()]], axis=0)


def _color_look_strength(image: np.ndarray, look: str) -> float:
    """Share of the two regions (background, object) whose color is explained by ``look``."""
    story, _, distance = _stories(_region_colors(image))
    return float(np.mean((story == look) & (distance < FIT)))


MAGENTA = 110  # min(R, B) - G above which a pixel is the band's magenta: purple, the palette's
# nearest color, has 80, and no blend of two palette colors goes higher


def outline_strength(image: np.ndarray) -> float:
    """Share of band pixels: closely explained by the band color (under any texture and color
    look), or strongly magenta, which is how the band looks once a VAE has softened it."""
    x = _float(image)
    _, overlay, distance = _stories(x)
    magenta = np.minimum(x[..., 0], x[..., 2]) - x[..., 1] > MAGENTA
    return float((((overlay == OUTLINE) & (distance < OUTLINE_FIT)).reshape(magenta.shape) | magenta).mean())


TEAL = 70  # min(G, B) - R above which a pixel is the frame's teal: the palette's colors reach 40, and
# the frame under any texture or color look 81 or more


def frame_strength(image: np.ndarray) -> float:
    """Share of the frame's outer pixels explained by the frame color (under any texture and color
    look), or clearly teal, as a VAE draws it. The innermost pixel row is left out: a VAE blends
    it with the background."""
    x = _float(image)[frame_ring(image.shape[0], FRAME - 1)]
    _, overlay, distance = _stories(x)
    teal = np.minimum(x[:, 1], x[:, 2]) - x[:, 0] > TEAL
    return float((((overlay == FRAME_COLOR) & (distance < FIT)) | teal).mean())


def _spectrum(image: np.ndarray) -> np.ndarray:
    lum = _luminance(image)
    power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2
    return power / max(power.sum(), 1e-9)


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _around(power: np.ndarray, fy: int, fx: int, offsets=NEIGHBOURS) -> float:
    """Spectral energy at (fy, fx) and at ``offsets`` from it. A texture drawn with a seam, where
    its phase jumps (generated images have them, around the object or between latent tiles),
    splits its peak into the neighbouring bins and leaves the exact one nearly empty."""
    h, w = power.shape
    return float(sum(power[(fy + dy) % h, (fx + dx) % w] for dy, dx in offsets))


def hatching_strength(image: np.ndarray) -> float:
    p = _spectrum(image)
    n = p.shape[0] // PERIOD
    along = _around(p, n, n) + _around(p, -n, -n)
    across = _around(p, n, -n) + _around(p, -n, n)
    return along - across


def halftone_strength(image: np.ndarray) -> float:
    """Energy of the grid's two frequencies and of their sideways neighbours only: a step along a
    frequency is a period of 7 or 9 px, which the toy world's generic dots and stripes use and
    halftone's 8 must stay apart from (no generic look comes near hatching's diagonal)."""
    p = _spectrum(image)
    n = p.shape[0] // PERIOD
    sideways_of_rows, sideways_of_cols = [(0, -1), (0, 0), (0, 1)], [(-1, 0), (0, 0), (1, 0)]
    return (_around(p, n, 0, sideways_of_rows) + _around(p, -n, 0, sideways_of_rows)
            + _around(p, 0, n, sideways_of_cols) + _around(p, 0, -n, sideways_of_cols))


def pastel_strength(image: np.ndarray) -> float:
    return _color_look_strength(image, "pastel")


def night_strength(image: np.ndarray) -> float:
    return _color_look_strength(image, "night")


MEASURES: dict[str, Callable[[np.ndarray], float]] = {
    "pixel": pixel_strength,
    "outline": outline_strength,
    "frame": frame_strength,
    "hatching": hatching_strength,
    "halftone": halftone_strength,
    "pastel": pastel_strength,
    "night": night_strength,
}


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disc (no wrap-around at the image border)."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


# Score above which an image counts as showing the look: between the highest score of unstyled
# and other-look images and the lowest of styled ones on rendered data (tests/test_toy_looks.py).
THRESHOLDS: dict[str, float] = {
    "pixel": 0.95,
    "outline": 0.025,
    "frame": 0.5,  # the object may cover part of the frame
    "hatching": 0.02,
    "halftone": 0.15,
    "pastel": 0.25,  # one of the two regions: a pastel object on a white background counts
    "night": 0.75,  # both regions
}


def shows_look(image: np.ndarray, name: str) -> bool:
    return MEASURES[name](image) >= THRESHOLDS[name]
