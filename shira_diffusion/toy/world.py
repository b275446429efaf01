"""The toy world: one upright shape on a plain background, 64 x 64 RGB, and its prompt grammar.

Fixed so that data made anywhere fits: ``a {color} {shape} on a {color} background`` with four
shapes, eight colors (exact RGB below, object color different from the background), radius 12-20
px, free position (the shape stays inside the image), triangles standing on their base, rings a
disc with a concentric hole of half its radius. Style prompts append ``, in {style} style``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "ring")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
MIN_RADIUS, MAX_RADIUS = 12, 20
RING_HOLE = 0.5  # hole radius / outer radius

_PROMPT = re.compile(
    r"^a (?P<color>\w+) (?P<shape>\w+) on a (?P<background>\w+) background(?:, in (?P<style>[\w\- ]+) style)?$"
)


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    cx: float
    cy: float
    radius: float

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; the toy world has {', '.join(SHAPES)}")
        for role, name in (("object", self.color), ("background", self.background)):
            if name not in COLORS:
                raise ValueError(f"unknown {role} color {name!r}; the toy world has {', '.join(COLORS)}")
        if self.color == self.background:
            raise ValueError("the object color must differ from the background color")

    def prompt(self, style: str | None = None) -> str:
        return make_prompt(self.color, self.shape, self.background, style)


def make_prompt(color: str, shape: str, background: str, style: str | None = None) -> str:
    text = f"a {color} {shape} on a {background} background"
    return f"{text}, in {style} style" if style else text


def parse_prompt(text: str) -> dict[str, str | None]:
    """``{"color", "shape", "background", "style"}`` of a grammar prompt; ValueError otherwise."""
    match = _PROMPT.match(text.strip())
    if not match or match["shape"] not in SHAPES or match["color"] not in COLORS or match["background"] not in COLORS:
        raise ValueError(f"not a toy-world prompt: {text!r} (expected 'a COLOR SHAPE on a COLOR background')")
    return match.groupdict()


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; any of shape/color/background/cx/cy/radius can be fixed by keyword."""
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    color = fixed.get("color") or list(COLORS)[rng.integers(len(COLORS))]
    backgrounds = [c for c in COLORS if c != color]
    background = fixed.get("background") or backgrounds[rng.integers(len(backgrounds))]
    radius = fixed.get("radius", rng.uniform(MIN_RADIUS, MAX_RADIUS))
    margin = radius + 1
    cx = fixed.get("cx", rng.uniform(margin, SIZE - margin))
    cy = fixed.get("cy", rng.uniform(margin, SIZE - margin))
    return Scene(shape, color, background, float(cx), float(cy), float(radius))


def shape_mask(scene: Scene, supersample: int = 4) -> np.ndarray:
    """Coverage of each pixel by the shape, in [0, 1] (antialiased by supersampling)."""
    n = SIZE * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    if scene.shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif scene.shape == "ring":
        d2 = dx**2 + dy**2
        inside = (d2 <= r**2) & (d2 >= (RING_HOLE * r) ** 2)
    elif scene.shape == "square":
        half = r * 0.886  # same area as the circle of radius r
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # upright triangle standing on its base, inscribed in the circle of radius r
        top, base = scene.cy - r, scene.cy + r / 2
        half_width = (y - top) / (base - top) * (r * np.sqrt(3) / 2)
        inside = (y >= top) & (y <= base) & (np.abs(dx) <= half_width)
    return inside.reshape(SIZE, supersample, SIZE, supersample).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 RGB array of shape (64, 64, 3)."""
    coverage = shape_mask(scene)[..., None]
    fg = np.array(COLORS[scene.color], dtype=np.float64)
    bg = np.array(COLORS[scene.background], dtype=np.float64)
    return np.round(coverage * fg + (1 - coverage) * bg).astype(np.uint8)


def write_dataset(directory: str | os.PathLike, count: int, seed: int = 0, style: str | None = None, look=None,
                  exclude: Collection[str] = ()) -> list[str]:
    """Write ``count`` images with same-name ``.txt`` captions (the layout training scripts read).

    ``look`` (image -> image) restyles each image; ``style`` is appended to its caption; scenes
    whose prompt is in ``exclude`` are skipped. Returns the image paths.
    """
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    excluded = set(exclude)
    for i in range(count):
        scene = sample_scene(rng)
        while scene.prompt() in excluded:
            scene = sample_scene(rng)
        image = render(scene)
        if look is not None:
            image = look(image)
        stem = os.path.join(str(directory), f"{i:04d}")
        Image.fromarray(image).save(stem + ".png")
        with open(stem + ".txt", "w") as handle:
            handle.write(scene.prompt(style) + "\n")
        paths.append(stem + ".png")
    return paths
