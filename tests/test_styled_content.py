import numpy as np
import pytest

from shira_diffusion.toy.content import read_content
from shira_diffusion.toy.looks import LOOKS, apply_looks
from shira_diffusion.toy.styled_content import read_styled_content
from shira_diffusion.toy.world import render, sample_scene


def _accuracy(looks, count=200):
    rng = np.random.default_rng(11)
    right = {"color": 0, "background": 0, "shape": 0}
    for _ in range(count):
        scene = sample_scene(rng)
        got = read_styled_content(apply_looks(render(scene), looks), looks)
        for key in right:
            right[key] += got[key] == getattr(scene, key)
    return {k: v / count for k, v in right.items()}


@pytest.mark.parametrize("look", sorted(LOOKS))
def test_content_reads_through_each_look(look):
    accuracy = _accuracy([look])
    assert min(accuracy.values()) >= 0.97, accuracy


@pytest.mark.parametrize("looks", [("hatching", "pastel"), ("halftone", "night"), ("pixel", "pastel"),
                                   ("outline", "night"), ("hatching", "outline"), ("frame", "halftone"),
                                   ("frame", "hatching"), ("frame", "outline"), ("frame", "night")])
def test_content_reads_through_mixes_of_two_looks(looks):
    # The outline's band is found by its color; where a texture or color map also touches it,
    # some band pixels escape and the silhouette grows: the weaker case, stated here.
    accuracy = _accuracy(list(looks))
    assert min(accuracy.values()) >= 0.85, accuracy


def test_without_looks_it_reads_like_the_plain_reader():
    rng = np.random.default_rng(5)
    for _ in range(50):
        image = render(sample_scene(rng))
        assert read_styled_content(image) == read_content(image)


def _soften(image):
    """A 3 x 3 box blur: how a VAE round trip softens the outline's band into its neighbours."""
    x = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    out = sum(x[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("look, seed", [("outline", 3), ("frame", 4)])
def test_content_reads_through_a_softened_overlay(look, seed):
    # Outline: blends of the band and its neighbours (blue + magenta reads purple) must not be
    # taken for the object's or the background's color (0.88 before the band's fringe was left
    # out). Frame: a VAE blends its inner edge with the background, so the background is read
    # inside it.
    rng = np.random.default_rng(seed)
    right = 0
    for _ in range(200):
        scene = sample_scene(rng)
        got = read_styled_content(_soften(LOOKS[look](render(scene))), [look])
        right += all(got[k] == getattr(scene, k) for k in ("color", "shape", "background"))
    assert right / 200 >= 0.96
