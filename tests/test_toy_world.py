import numpy as np
import pytest
from PIL import Image

from shira_diffusion.toy.content import classify_shape, read_content
from shira_diffusion.toy.world import COLORS, SHAPES, SIZE, Scene, parse_prompt, render, sample_scene, write_dataset


def test_render_is_exact_on_plain_pixels():
    scene = Scene("square", "red", "blue", cx=32, cy=32, radius=16)
    image = render(scene)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert tuple(image[32, 32]) == COLORS["red"]
    assert tuple(image[0, 0]) == COLORS["blue"]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_geometry(shape):
    image = render(Scene(shape, "white", "black", cx=32, cy=32, radius=18))
    on = (image.astype(int).sum(axis=-1) > 3 * 128)
    center_on = bool(on[32, 32])
    assert center_on == (shape != "ring")  # a ring's center is its hole
    if shape == "triangle":
        rows = on.sum(axis=1)
        assert rows[17] < rows[40]  # narrow apex on top, wide base below


def test_scenes_stay_inside_and_respect_the_grammar():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = sample_scene(rng)
        assert scene.color != scene.background
        assert 12 <= scene.radius <= 20
        assert scene.radius < scene.cx < SIZE - scene.radius and scene.radius < scene.cy < SIZE - scene.radius
        assert parse_prompt(scene.prompt()) == {
            "color": scene.color, "shape": scene.shape, "background": scene.background, "style": None
        }
    assert parse_prompt("a red ring on a white background, in sepia style")["style"] == "sepia"


@pytest.mark.parametrize("text", ["a red dog on a blue background", "red circle", "a red circle on a pink background"])
def test_parse_prompt_rejects_other_text(text):
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        parse_prompt(text)


def test_scene_rejects_bad_values():
    with pytest.raises(ValueError, match="must differ"):
        Scene("circle", "red", "red", 32, 32, 15)
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("star", "red", "blue", 32, 32, 15)


def test_content_is_read_back_at_least_99_percent():
    rng = np.random.default_rng(1)
    hits = {"color": 0, "background": 0, "shape": 0}
    n = 1000
    for _ in range(n):
        scene = sample_scene(rng)
        found = read_content(render(scene))
        hits["color"] += found["color"] == scene.color
        hits["background"] += found["background"] == scene.background
        hits["shape"] += found["shape"] == scene.shape
    for key, count in hits.items():
        assert count / n >= 0.99, (key, count / n)


def test_dataset_writer(tmp_path):
    paths = write_dataset(tmp_path, 5, seed=3, style="sepia", look=lambda im: 255 - im)
    assert len(paths) == 5
    for path in paths:
        caption = open(path[:-4] + ".txt").read().strip()
        assert caption.endswith(", in sepia style")
        assert Image.open(path).size == (SIZE, SIZE)
    again = [open(p[:-4] + ".txt").read() for p in write_dataset(tmp_path / "b", 5, seed=3, style="sepia")]
    assert again == [open(p[:-4] + ".txt").read() for p in paths]


def _rounded_square(size: int, corner: int) -> np.ndarray:
    """A filled square with corners rounded to ``corner`` px, in a 64 x 64 mask."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    lo, hi = 16, 16 + size - 1
    inside = (yy >= lo) & (yy <= hi) & (xx >= lo) & (xx <= hi)
    cy = np.clip(yy, lo + corner, hi - corner)
    cx = np.clip(xx, lo + corner, hi - corner)
    return inside & ((yy - cy) ** 2 + (xx - cx) ** 2 <= corner**2)


@pytest.mark.parametrize("corner", [0, 4, 8])
def test_squares_with_rounded_corners_and_specks_read_as_squares(corner):
    # Generated squares often come out with rounded corners (0.6 of the half side at 8 px here:
    # box fill 0.88, half way between a circle's 0.785 and 1), and VAEs leave specks near the
    # object's color; a speck far from the object must not stretch the box the shape is read from.
    mask = _rounded_square(28, corner)
    assert classify_shape(mask) == "square"
    mask[2:4, 60:62] = True
    assert classify_shape(mask) == "square"


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_read_back_with_a_speck(shape):
    scene = Scene(shape=shape, color="red", background="white", cx=32.0, cy=32.0, radius=14.0)
    mask = (render(scene).astype(int) - np.array(COLORS["white"])).any(-1)
    mask[1:3, 1:3] = True
    assert classify_shape(mask) == shape
