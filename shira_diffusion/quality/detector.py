"""A label-free style detector per style, made at training time from what the user gave.

Positives: the training images as the base's VAE renders them (encoded and decoded, so the detector
does not learn "crisp drawing" against "generated image"). Negatives: the base's own images for the
same captions without the trigger. Each image is read beside the base's image for the same prompt
and seed (its "plain" pair): the features are the image's own statistics (``features.style_features``)
and their difference from the pair's, so the prompt's colours and shapes, which a style does not
change, cancel. A training image's pair is the base's image for its caption; a negative's, another
base image for the caption. The classifier is the transfer filter's L2-regularised logistic
regression on standardised features.

Stored beside the adapter as ``X.detector.json`` (JSON, no pickle): the feature definition's version,
how it was fit, the standardisation, weights and bias.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ShiraError
from .features import style_features

FEATURES_VERSION = 1
STORED_FORMAT = "shira-style-detector"
L2 = 1.0
MAX_IMAGES = 24  # training images the detector learns from: enough for ~120 features at this L2
PAIR_SEEDS = (1000, 2000)  # the base's two draws per caption: a positive's pair, and a negative with its pair


@dataclass
class StyleDetector:
    """``shows(images, plain)``: which images show the style, each read beside the base's image for
    the same prompt and seed."""

    classifier: object  # transfer.discriminator.Discriminator
    about: dict

    def scores(self, images: Sequence[np.ndarray], plain: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) != len(plain):
            raise ShiraError(f"{len(images)} images but {len(plain)} plain images: one plain image per image")
        return self.classifier.p_real(paired_features(style_features(images), style_features(plain)))

    def shows(self, images: Sequence[np.ndarray], plain: Sequence[np.ndarray]) -> np.ndarray:
        return self.scores(images, plain) >= self.classifier.threshold

    def strength(self, images: Sequence[np.ndarray], plain: Sequence[np.ndarray]) -> float:
        """The share of ``images`` that show the style (the look measures' scale)."""
        if not len(images):
            raise ShiraError("no images to measure")
        return float(np.mean(self.shows(images, plain)))

    def save(self, path: str | os.PathLike) -> None:
        from ..files import write_atomically

        text = json.dumps({"format": STORED_FORMAT, "features_version": FEATURES_VERSION, **self.about,
                           **self.classifier.to_dict()}, indent=1)
        write_atomically(path, lambda temporary: _write_text(temporary, text), overwrite=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StyleDetector":
        from ..transfer.discriminator import read_stored_classifier

        return cls(*read_stored_classifier(path, STORED_FORMAT, FEATURES_VERSION, "style detector",
                                           "train the style again"))


def paired_features(own: np.ndarray, plain: np.ndarray) -> np.ndarray:
    return np.concatenate([own, own - plain], axis=1)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def vae_rendered(vae, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Images as the VAE gives them back (encode, posterior mode, decode), at their own size."""
    import torch

    from ..images import vae_round_trip

    out = []
    for start in range(0, len(images), batch_size):
        chunk = np.stack([np.asarray(im, dtype=np.float32) for im in images[start:start + batch_size]])
        batch = torch.from_numpy(chunk).permute(0, 3, 1, 2) / 127.5 - 1.0
        decoded = vae_round_trip(vae, batch).permute(0, 2, 3, 1).cpu().numpy()
        out.extend(((decoded + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8))
    return out


def fit_style_detector(pipe, images: Sequence, captions: Sequence[str], *, steps: int = 20, guidance: float = 5.0,
                       seed: int = 0) -> StyleDetector:
    """Fit on (up to ``MAX_IMAGES`` of) the training ``images`` and the base's images for their
    ``captions`` (no trigger): ``pipe`` must hold the base without the adapter."""
    from ..generate import generate_batched

    if len(images) < 2:
        raise ShiraError("a style detector needs at least 2 training images")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(images))[:MAX_IMAGES])
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = [np.asarray(_rgb(images[i]).resize((size, size))) for i in chosen]
    prompts = [captions[i] for i in chosen]
    pair_a, pair_b = (generate_batched(pipe, prompts, steps, guidance, seeds=[s + i for i in range(len(prompts))],
                                       desc="style detector: the base's images") for s in PAIR_SEEDS)
    return detector_from_features(style_features(vae_rendered(pipe.vae, real)), style_features(pair_a),
                                  style_features(pair_b), about={"images": len(real), "steps": steps,
                                                                 "guidance": guidance, "seed": seed, "size": size,
                                                                 "pair_seeds": list(PAIR_SEEDS)})


def detector_from_features(real: np.ndarray, pair_a: np.ndarray, pair_b: np.ndarray, about: dict) -> StyleDetector:
    """Fit on features: ``real[i]`` (a training image) beside ``pair_a[i]`` (the base's image for its
    caption) is the style; ``pair_b[i]`` (another base image for it) beside ``pair_a[i]`` is not."""
    from ..transfer.discriminator import fit_discriminator

    classifier = fit_discriminator(paired_features(real, pair_a), paired_features(pair_b, pair_a), l2=L2)
    return StyleDetector(classifier, {**about, "l2": L2})


def _rgb(image):
    from PIL import Image

    return image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("RGB")
