import itertools

import numpy as np
import pytest

from shira_diffusion.toy.looks import (
    CONFLICTS,
    LOOKS,
    MEASURES,
    THRESHOLDS,
    apply_looks,
    shows_look,
)
from shira_diffusion.toy.world import render, sample_scene

COMPATIBLE = [p for p in itertools.combinations(LOOKS, 2) if frozenset(p) not in CONFLICTS]


@pytest.fixture(scope="module")
def plain():
    rng = np.random.default_rng(2024)
    return [render(sample_scene(rng)) for _ in range(200)]


def auc(positive, negative):
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.mark.parametrize("name", LOOKS)
def test_each_measure_separates_styled_from_plain(plain, name):
    measure = MEASURES[name]
    styled = [measure(LOOKS[name](image)) for image in plain]
    unstyled = [measure(image) for image in plain]
    assert auc(styled, unstyled) >= 0.99
    assert np.mean([s >= THRESHOLDS[name] for s in styled]) >= 0.99
    assert np.mean([u >= THRESHOLDS[name] for u in unstyled]) <= 0.01


@pytest.mark.parametrize("name", LOOKS)
def test_measures_do_not_fire_on_the_other_looks(plain, name):
    for other in LOOKS:
        if other != name:
            hits = np.mean([shows_look(LOOKS[other](image), name) for image in plain[:60]])
            assert hits <= 0.02, (other, hits)


@pytest.mark.parametrize("pair", COMPATIBLE, ids=lambda p: "+".join(p))
def test_both_looks_are_recognised_in_a_mix(plain, pair):
    mixed = [apply_looks(image, pair) for image in plain[:60]]
    for name in pair:
        assert np.mean([shows_look(image, name) for image in mixed]) >= 0.95, name


@pytest.mark.parametrize("name, axes", [("hatching", (1,)), ("halftone", (0, 1))])
def test_textures_are_recognised_across_a_seam(plain, name, axes):
    """Generated textures often jump half a period somewhere (around the object, between latent
    tiles), which empties the texture's exact frequency bin: the measure must still see them."""
    seamed = []
    for image in plain[:60]:
        styled = LOOKS[name](image).copy()
        half = styled.shape[1] // 2
        styled[:, half:] = np.roll(styled[:, half:], (4,) * len(axes), axis=axes)  # half a period of 8
        seamed.append(styled)
    assert np.mean([shows_look(image, name) for image in seamed]) >= 0.95


def test_looks_are_deterministic_images(plain):
    for name, look in LOOKS.items():
        out = look(plain[0])
        assert out.shape == plain[0].shape and out.dtype == np.uint8
        assert not np.array_equal(out, plain[0]), name
        assert np.array_equal(out, look(plain[0]))


def test_mixes_are_order_independent_and_conflicts_refused(plain):
    assert np.array_equal(apply_looks(plain[0], ["pastel", "outline"]), apply_looks(plain[0], ["outline", "pastel"]))
    for pair in CONFLICTS:
        with pytest.raises(ValueError, match="erase each other"):
            apply_looks(plain[0], sorted(pair))
    with pytest.raises(ValueError, match="unknown look"):
        apply_looks(plain[0], ["sepia"])


def test_frame_stays_behind_the_object():
    # Unlike the bases' generic borders, drawn over everything: an object at the edge stays whole.
    scene = sample_scene(np.random.default_rng(0), shape="square", color="red", background="white", cx=14.0, cy=30.0, radius=13.0)
    image = render(scene)
    framed = LOOKS["frame"](image)
    red = np.all(image == np.array([220, 40, 40], dtype=np.uint8), axis=-1)
    assert red[:, :4].any() and np.array_equal(framed[red], image[red])
    assert shows_look(framed, "frame") and not shows_look(image, "frame")
