"""The metrics module against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from shira_diffusion.metrics import concept_retention, content_scores, psnr, reconstruction_psnr, style_strength
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import render, sample_scene


def scenes(count, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_content_scores_count_colors_shape_and_both():
    drawn = scenes(6)
    images = [render(s) for s in drawn]
    expected = [{"color": s.color, "shape": s.shape, "background": s.background} for s in drawn]
    assert content_scores(images, expected)["all"] == 1.0
    wrong = [dict(e) for e in expected]
    wrong[0]["shape"] = next(s for s in ("circle", "square") if s != expected[0]["shape"])  # shape only
    wrong[1]["color"] = next(c for c in ("red", "blue", "green") if c not in (expected[1]["color"],
                                                                              expected[1]["background"]))
    scores = content_scores(images, wrong)
    assert scores["shape"] == pytest.approx(5 / 6) and scores["colors"] == pytest.approx(5 / 6)
    assert scores["all"] == pytest.approx(4 / 6)
    assert sum(scores["shape_confusion"][wrong[0]["shape"]].values()) >= 1
    with pytest.raises(ValueError, match="2 images but 1"):
        content_scores(images[:2], expected[:1])


def test_style_strength_is_the_share_showing_the_look():
    plain = [render(s) for s in scenes(4)]
    styled = [LOOKS["outline"](image) for image in plain]
    assert style_strength(styled + plain, "outline") == 0.5
    with pytest.raises(ValueError, match="unknown look"):
        style_strength(plain, "sepia-ish")


def test_concept_retention():
    assert concept_retention(0.45, 0.9) == pytest.approx(0.5)
    assert concept_retention(0.9, 0.9) == 1.0
    assert concept_retention(0.3, 0.0) == 0.0


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[0, 0, 0] = 255  # one entry off by 255 of 48: mse = 255**2 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(48))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:2])


def test_reconstruction_psnr_of_an_identity_vae_is_very_high():
    class Identity(torch.nn.Module):
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

        def decode(self, z):
            return type("O", (), {"sample": z})()

    batch = torch.rand(2, 3, 8, 8) * 2 - 1
    assert (reconstruction_psnr(Identity(), batch) > 100).all()
