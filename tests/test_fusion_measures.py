"""Style measures for retention: the toy look measure and the label-free feature measure."""

import numpy as np
import pytest

from shira_diffusion.errors import ShiraError
from shira_diffusion.fusion.measures import FeatureMeasure, LookMeasure, clip_encoder
from shira_diffusion.metrics import style_strength
from shira_diffusion.toy.looks import apply_looks
from shira_diffusion.toy.world import render, sample_scene
from shira_diffusion.transfer.discriminator import image_features


def _scenes(seed, n):
    rng = np.random.default_rng(seed)
    return [render(sample_scene(rng)) for _ in range(n)]


def test_feature_measure_tells_styled_from_plain_without_labels():
    """References: 12 styled and 12 plain images; new images of other scenes are read right."""
    measure = FeatureMeasure(image_features, [apply_looks(s, ["hatching"]) for s in _scenes(0, 12)], _scenes(1, 12))
    fresh = _scenes(2, 16)
    assert measure.strength([apply_looks(s, ["hatching"]) for s in fresh]) >= 0.9
    assert measure.strength(fresh) <= 0.1
    half = [apply_looks(s, ["hatching"]) for s in fresh[:8]] + fresh[8:]
    assert measure.strength(half) == pytest.approx(0.5, abs=0.125)


def test_look_measure_is_the_toy_measure():
    images = [apply_looks(s, ["frame"]) for s in _scenes(3, 6)] + _scenes(4, 2)
    assert LookMeasure("frame").strength(images) == style_strength(images, "frame")


def test_clip_encoder_on_a_tiny_random_model():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    encode = clip_encoder(CLIPVisionModelWithProjection(config))
    images = _scenes(5, 5)
    features = encode(images)
    assert features.shape == (5, 16) and np.isfinite(features).all()
    assert np.array_equal(features, encode(images))  # deterministic
    measure = FeatureMeasure(encode, [apply_looks(s, ["night"]) for s in images], _scenes(6, 4))
    assert 0.0 <= measure.strength(_scenes(7, 4)) <= 1.0


def test_bad_references_and_models():
    with pytest.raises(ShiraError, match="at least 2"):
        FeatureMeasure(image_features, _scenes(8, 1), _scenes(9, 3))
    with pytest.raises(ShiraError, match="cannot load a CLIP vision model"):
        clip_encoder("no/such-model-here")
